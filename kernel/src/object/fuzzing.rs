//! The fuzz targets' drivers (`tests/fuzz`), here so that the host tests
//! run them too: over the committed seed corpora and crash regressions,
//! without cargo-fuzz.
//!
//! - [`syscalls`]: bytes become a sequence of system calls by three threads
//!   of the reference world ([`super::model::world`]), through the kernel's
//!   real entry point (`handle_syscall`; the kernel's IPC fastpath is
//!   assembly, checked by boot cases), with every
//!   invocation, IPC and capability transfer reachable. After every step the
//!   invariants hold; a revoke removed exactly the descendants.
//! - [`decoders`]: bytes become invocations (capability, label, words,
//!   extra capabilities) given to every decoder, which must not panic and
//!   must not change anything.

#![allow(missing_docs)]

extern crate std;

use std::vec::Vec;

use strata_abi::bootinfo::IpcBuffer;
use strata_abi::invocation::Label;
use strata_abi::message::MessageInfo;
use strata_abi::syscall::Syscall;

use super::model::{RevokeCheck, check_invariants, cptr, root_cap, slot, world};
use super::tcb::{ThreadState, UserContext};
use super::*;
use crate::syscall::Outcome;

/// Fuzz input: its bytes in order, then zeros.
pub struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    pub fn byte(&mut self) -> u8 {
        let byte = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }

    pub fn word(&mut self) -> u64 {
        u64::from_le_bytes(core::array::from_fn(|_| self.byte()))
    }

    /// A slot number: mostly one of `occupied`.
    pub fn slot_number(&mut self, occupied: &[u64]) -> u64 {
        match self.byte() % 4 {
            0..=2 if !occupied.is_empty() => occupied[usize::from(self.byte()) % occupied.len()],
            _ => u64::from(self.byte() % 64),
        }
    }

    /// A message word that means something to some invocation: a slot
    /// number (mostly an occupied one) or capability pointer, a small
    /// number, an object type, a depth, an address, rights, or any word.
    pub fn message_word(&mut self, occupied: &[u64]) -> u64 {
        match self.byte() % 12 {
            0..=2 => self.slot_number(occupied),
            3 => cptr(self.slot_number(occupied)),
            4 => u64::from(self.byte() % 16),
            5 => u64::from(self.byte() % 13),
            6 | 7 => [6, 6, 6, 64, 0, 1, 10, 12][usize::from(self.byte() % 8)],
            8 => 0x1000 * u64::from(self.byte()) + [0x1_0000, 0x7fff_ffff_f000][usize::from(self.byte() % 2)],
            9 => u64::from(self.byte() % 16),
            _ => self.word(),
        }
    }

    /// A label, mostly a real one.
    pub fn label(&mut self) -> u64 {
        match self.byte() {
            0..=229 => {
                let n = u64::from(self.byte());
                (0..=255).map(|k| (n + k) % 128).find(|&l| Label::try_from(l).is_ok()).unwrap_or(1)
            }
            _ => self.word(),
        }
    }
}

/// Labels an object of this kind understands.
fn family(cap: Capability) -> &'static [Label] {
    use Label::*;
    match cap {
        Capability::CNode { .. } => &[CNodeRevoke, CNodeDelete, CNodeCopy, CNodeMint, CNodeMove, CNodeMutate],
        Capability::Untyped { .. } => &[UntypedRetype],
        Capability::AsidControl => &[AsidControlMakePool],
        Capability::AsidPool { .. } => &[AsidPoolAssign],
        Capability::PageTable { .. } => &[PageTableMap, PageTableUnmap],
        Capability::Frame { .. } => &[FrameMap, FrameUnmap, FrameGetAddress],
        Capability::Tcb { .. } => &[
            TcbConfigure,
            TcbSetPriority,
            TcbWriteRegisters,
            TcbResume,
            TcbSuspend,
            TcbBindNotification,
            TcbUnbindNotification,
            TcbReadRegisters,
        ],
        Capability::IoPortControl => &[IoPortControlIssue],
        Capability::IoPort { .. } => &[IoPortIn, IoPortOut],
        Capability::IrqControl => &[IrqControlGetIsa, IrqControlGetLine],
        Capability::IrqHandler { .. } => &[IrqHandlerAck, IrqHandlerSetNotification, IrqHandlerClear],
        Capability::Vcpu { .. } => &[VcpuSetTcb, VcpuSetSpace, VcpuReadState, VcpuWriteState],
        _ => &[],
    }
}

const NUMBERS: [Syscall; 11] = [
    Syscall::VmEnter,
    Syscall::Call,
    Syscall::Call,
    Syscall::Call,
    Syscall::Call,
    Syscall::ReplyRecv,
    Syscall::Send,
    Syscall::NbSend,
    Syscall::Recv,
    Syscall::NbRecv,
    Syscall::Reply,
];

/// What a run of [`syscalls`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// System calls made.
    pub calls: u32,
    /// Of which calls on object capabilities (invocations).
    pub invocations: u32,
    /// Invocations (calls on object capabilities) that succeeded.
    pub succeeded: u32,
}

/// Runs the system calls `data` describes; panics if an invariant breaks.
pub fn syscalls(data: &[u8]) -> Stats {
    let mut stats = Stats::default();
    let (mut space, threads) = world(4);
    // Authority over I/O ports and IRQs too (simulated by the arena).
    space.insert_root(slot(5), Capability::IoPortControl);
    space.insert_root(slot(6), Capability::IrqControl);
    let mut input = Input::new(data);
    for _ in 0..256 {
        if input.is_empty() {
            break;
        }
        let mut runnable: Vec<PhysAddr> =
            threads.iter().copied().filter(|&t| space.thread_state(t) == ThreadState::Runnable).collect();
        if runnable.is_empty() {
            // All blocked or stopped: restart them (suspend and resume, as
            // a supervisor would), or stop if their TCBs are gone.
            for &t in &threads {
                if let Ok(resume) =
                    space.decode_tcb(Capability::Tcb { object: t }, Label::TcbResume, &[], &[])
                {
                    space.suspend(t);
                    space.perform_tcb(resume);
                }
            }
            runnable =
                threads.iter().copied().filter(|&t| space.thread_state(t) == ThreadState::Runnable).collect();
            if runnable.is_empty() {
                break;
            }
        }
        let tcb = runnable[usize::from(input.byte()) % runnable.len()];
        let number = match input.byte() {
            0..=249 => NUMBERS[usize::from(input.byte()) % NUMBERS.len()] as u64,
            _ => input.word(),
        };
        // Mostly an occupied slot, and a label its object understands.
        let occupied: Vec<u64> = (0..64).filter(|&i| !space.cap(slot(i)).is_null()).collect();
        let index = match input.byte() % 16 {
            0..=9 if !occupied.is_empty() => occupied[usize::from(input.byte()) % occupied.len()],
            _ => u64::from(input.byte() % 64),
        };
        let target = if input.byte().is_multiple_of(32) { input.word() } else { cptr(index) };
        let family = family(space.cap(slot(index)));
        let label = match input.byte() % 4 {
            0..=2 if !family.is_empty() => family[usize::from(input.byte()) % family.len()] as u64,
            _ => input.label(),
        };
        let length = input.byte() % 14;
        let extra_caps = input.byte() % 4;
        let words: [u64; 14] = core::array::from_fn(|_| input.message_word(&occupied));
        if let Some((frame, _)) = space.ipc_buffer(tcb) {
            let message = core::mem::offset_of!(IpcBuffer, message) as u64;
            for (i, &word) in words.iter().enumerate().skip(8) {
                space.memory.write(frame.offset(message + 8 * i as u64), word);
            }
            let caps = core::mem::offset_of!(IpcBuffer, caps_or_badges) as u64;
            for i in 0..3 {
                let pointer = cptr(input.slot_number(&occupied));
                space.memory.write(frame.offset(caps + 8 * i), pointer);
            }
        }
        let info = MessageInfo::new(label & ((1 << 52) - 1), extra_caps, length).encode().unwrap_or(0);
        let mut context: UserContext = space.context(tcb);
        (context.rax, context.rdi, context.rsi) = (number, target, info);
        context.set_message(&words[..8]);
        context.rip = 0x40_1002;
        space.set_context(tcb, &context);

        // A revoke through the threads' CSpace root: check what it removes.
        let revoke = (number == Syscall::Call as u64 && label == Label::CNodeRevoke as u64)
            .then(|| space.lookup_cap(root_cap(), target).ok())
            .flatten()
            .filter(|(_, cap)| matches!(cap, Capability::CNode { .. }))
            .and_then(|(_, cnode)| space.lookup_slot(cnode, words[0], u8::try_from(words[1]).ok()?).ok())
            .filter(|&slot| !space.cap(slot).is_null())
            .map(|slot| RevokeCheck::before(&space, slot));

        stats.calls += 1;
        let invocation = number == Syscall::Call as u64
            && space.lookup_cap(root_cap(), target).is_ok_and(|(_, cap)| {
                !matches!(cap, Capability::Endpoint { .. } | Capability::Notification { .. })
            });
        stats.invocations += u32::from(invocation);
        // A preempted delete or revoke is restarted until it is done,
        // as the kernel does after taking its interrupts.
        for _ in 0..100_000 {
            match space.handle_syscall(tcb) {
                Outcome::Fault => space.suspend(tcb),
                // The host cannot run a guest: check the entry, then
                // report whatever exit the control block holds.
                Outcome::VmEnter(flags) => match space.vm_prepare(tcb, flags) {
                    Ok(entry) => {
                        if let Some(exit) = space.vm_exit(&entry) {
                            space.vm_reply(tcb, &entry, exit);
                        }
                    }
                    Err(super::vcpu::VmEnterRefusal::Exit(exit)) => space.reply_vm_exit(tcb, exit),
                    Err(super::vcpu::VmEnterRefusal::Signal(entry, exit)) => {
                        space.vm_reply(tcb, &entry, exit)
                    }
                    Err(super::vcpu::VmEnterRefusal::Error(_)) => {}
                },
                _ if space.context(tcb).rip == 0x40_1000 => {
                    let mut again = space.context(tcb);
                    again.rip = 0x40_1002;
                    space.set_context(tcb, &again);
                    continue;
                }
                Outcome::Continue
                    if invocation
                        && space.thread_state(tcb) == ThreadState::Runnable
                        && MessageInfo::decode(space.context(tcb).rsi).label == 0 =>
                {
                    stats.succeeded += 1;
                }
                _ => {}
            }
            break;
        }
        check_invariants(&space);
        if let Some(check) = revoke {
            check.after(&space);
        }
    }
    stats
}

/// Gives the invocations `data` describes to every decoder; panics if one
/// panics or changes anything.
pub fn decoders(data: &[u8]) {
    let (mut space, _) = world(2);
    space.insert_root(slot(5), Capability::IoPortControl);
    space.insert_root(slot(6), Capability::IrqControl);
    let before = space.clone();
    let mut input = Input::new(data);
    while !input.is_empty() {
        let target = slot(u64::from(input.byte() % 64));
        let cap = space.cap(target);
        let Ok(label) = Label::try_from(input.label()) else { continue };
        let length = usize::from(input.byte() % 12);
        let words: Vec<u64> = (0..length).map(|_| input.message_word(&[])).collect();
        let extra: Vec<Slot> = (0..input.byte() % 4).map(|_| slot(u64::from(input.byte() % 64))).collect();
        let source_root = extra.first().map(|&s| space.cap(s));
        let word = |n: usize| words.get(n).copied().unwrap_or(0);
        let _ = space.decode_cnode(cap, label, &words, source_root);
        let _ = space.decode_vspace(target, label, &words, &extra);
        let _ = space.decode_tcb(cap, label, &words, &extra);
        let _ = space.decode_ioport(target, label, &words, &extra);
        let _ = space.decode_irq(target, label, &words, &extra);
        let _ = space.decode_vcpu(cap, label, &words, &extra);
        let destination = space.cap(slot(word(2) % 64));
        let _ = space.decode_retype(target, word(0), word(1), destination, word(4), word(5));
        let _ = space.lookup_destination(root_cap(), word(2), word(3));
    }
    assert!(space.memory == before.memory, "a decoder changed memory");
    assert_eq!(space.scheduler, before.scheduler, "a decoder changed the run queues");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of a corpus or regression directory of `tests/fuzz`.
    fn inputs(target: &str) -> Vec<Vec<u8>> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz");
        let mut files = Vec::new();
        for dir in [root.join("corpus").join(target), root.join("regressions").join(target)] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                files.push(std::fs::read(entry.path()).expect("readable input"));
            }
        }
        files
    }

    #[test]
    fn the_syscall_driver_runs_its_corpus_and_regressions() {
        let inputs = inputs("cap_abi");
        assert!(!inputs.is_empty(), "tests/fuzz/corpus/cap_abi is empty");
        for input in inputs {
            syscalls(&input);
        }
    }

    #[test]
    fn the_decoder_driver_runs_its_corpus_and_regressions() {
        let inputs = inputs("decode");
        assert!(!inputs.is_empty(), "tests/fuzz/corpus/decode is empty");
        for input in inputs {
            decoders(&input);
        }
    }

    #[test]
    fn the_syscall_driver_gets_past_the_errors() {
        // On arbitrary bytes a useful driver makes a fair share of
        // invocations succeed (retype, copy, map...), not only errors.
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut total = Stats::default();
        for _ in 0..40 {
            let bytes: Vec<u8> = (0..3000)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let stats = syscalls(&bytes);
            total.calls += stats.calls;
            total.invocations += stats.invocations;
            total.succeeded += stats.succeeded;
        }
        assert!(total.invocations > 300, "{total:?}");
        assert!(total.succeeded * 10 > total.invocations, "under 10% of invocations succeed: {total:?}");
    }
}
