//! System calls: from a thread's saved registers to an object invocation
//! and a reply, independent of how the registers were saved (that is in
//! `arch`). Plain Rust over the object layer, so it is tested on the host.
//!
//! Registers (see `docs/abi.md`): RAX holds the system call number, RDI the
//! capability pointer, RSI the message info word, and RDX, R8, R9, R10,
//! R12, R13, R14, R15 message words 0–7. Extra capabilities of an
//! invocation are capability pointers in the thread's IPC buffer.
//!
//! A `Call` on an object capability is decoded with no side effects, then
//! performed. The reply replaces RSI (label 0 or the error code, and the
//! number of reply words) and the message registers. Delete and revoke run
//! with a bounded budget. When that runs out, the thread's instruction
//! pointer is moved back onto its `syscall`, so the same call resumes the
//! next time the thread runs, after the kernel has taken any pending
//! interrupt.

use strata_abi::error::{InvocationError, LookupFailure};
use strata_abi::invocation::Label;
use strata_abi::message::MessageInfo;
use strata_abi::syscall::Syscall;

use crate::addr::PhysAddr;
use crate::object::delete::{Budget, Progress};
use crate::object::tcb::UserContext;
use crate::object::vspace::VSpaceInvocation;
use crate::object::{Capability, ObjectSpace, PhysicalMemory, Slot};
use strata_abi::object::Rights;

/// Work a delete or revoke may do before the kernel takes interrupts.
pub const PREEMPTION_BUDGET: u32 = 256;
/// Length of the `syscall` instruction (0F 05): how far a restarted call backs up.
pub(crate) const SYSCALL_LENGTH: u64 = 2;

/// What the kernel must do after a system call, besides running whatever
/// is runnable (the caller, unless it blocked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Return to the thread (or, if it blocked, to whatever runs next).
    Continue,
    /// The thread gave up its time slice.
    Yield,
    /// Print this byte on the console (debug builds).
    PutChar(u8),
    /// End the run with this exit code (test builds).
    Shutdown(u8),
    /// Reply with the event counters (test builds).
    Counters,
    /// Run the thread's VCPU, with these `vcpu::enter` flags.
    VmEnter(u64),
    /// The thread faulted (unknown system call, or IPC through a
    /// capability that cannot do it) and has no fault handler: suspend it.
    Fault,
}

pub(crate) fn set_reply(context: &mut UserContext, label: u64, words: &[u64]) {
    let length = words.len().min(4);
    context.rsi = MessageInfo::new(label, 0, length as u8).encode().unwrap_or(0);
    let mut padded = [0u64; 4];
    padded[..length].copy_from_slice(&words[..length]);
    context.set_message(&padded);
}

pub(crate) fn reply_error(context: &mut UserContext, error: InvocationError) {
    set_reply(context, error.code(), &error.words());
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// Handles the system call the thread `tcb` made; its registers are
    /// in its TCB and are updated there (reply, received message, restart).
    pub fn handle_syscall(&mut self, tcb: PhysAddr) -> Outcome {
        let mut context = self.context(tcb);
        let Ok(syscall) = Syscall::try_from(context.rax) else {
            return self.fault(tcb, &context, crate::object::ipc::FAULT_SYSCALL);
        };
        let root = self.cap(Self::tcb_slot(tcb, 0));
        let target = || self.lookup_cap(root, context.rdi).map(|(_, cap)| cap);
        match syscall {
            Syscall::Call => match target() {
                Ok(cap @ Capability::Endpoint { rights, .. }) if rights.contains(Rights::WRITE) => {
                    self.send(tcb, cap, true, true);
                }
                Ok(Capability::Notification { object, badge, rights }) if rights.contains(Rights::WRITE) => {
                    self.signal(object, badge);
                }
                Ok(Capability::Endpoint { .. } | Capability::Notification { .. }) => {
                    return self.fault(tcb, &context, crate::object::ipc::FAULT_SYSCALL);
                }
                _ => {
                    match self.call(tcb, &context) {
                        Ok(Some(words)) if words.len() <= 4 => set_reply(&mut context, 0, &words),
                        Ok(Some(words)) => {
                            // Long replies go through the message registers
                            // and the IPC buffer, as a received message does.
                            self.set_context(tcb, &context);
                            let info = MessageInfo::new(0, 0, words.len() as u8);
                            self.deliver(tcb, context.rdi, info, &words);
                            context = self.context(tcb);
                        }
                        Ok(None) => context.rip = context.rip.wrapping_sub(SYSCALL_LENGTH),
                        Err(error) => reply_error(&mut context, error),
                    }
                    self.set_context(tcb, &context);
                }
            },
            Syscall::Send | Syscall::NbSend => match target() {
                Ok(cap @ Capability::Endpoint { rights, .. }) if rights.contains(Rights::WRITE) => {
                    self.send(tcb, cap, syscall == Syscall::Send, false);
                }
                Ok(Capability::Notification { object, badge, rights }) if rights.contains(Rights::WRITE) => {
                    self.signal(object, badge);
                }
                _ => return self.fault(tcb, &context, crate::object::ipc::FAULT_SYSCALL),
            },
            Syscall::Recv | Syscall::NbRecv => match target() {
                Ok(cap @ (Capability::Endpoint { rights, .. } | Capability::Notification { rights, .. }))
                    if rights.contains(Rights::READ) =>
                {
                    self.receive(tcb, cap, syscall == Syscall::Recv);
                }
                _ => return self.fault(tcb, &context, crate::object::ipc::FAULT_SYSCALL),
            },
            Syscall::Reply => self.reply(tcb),
            Syscall::ReplyRecv => match target() {
                Ok(cap @ Capability::Endpoint { rights, .. }) if rights.contains(Rights::READ) => {
                    self.reply(tcb);
                    self.receive(tcb, cap, true);
                }
                _ => return self.fault(tcb, &context, crate::object::ipc::FAULT_SYSCALL),
            },
            Syscall::Yield => return Outcome::Yield,
            Syscall::DebugPutChar => return Outcome::PutChar(context.rdi as u8),
            Syscall::DebugShutdown => return Outcome::Shutdown(context.rdi as u8),
            Syscall::DebugCounters => return Outcome::Counters,
            Syscall::VmEnter => return Outcome::VmEnter(context.rdx),
        }
        Outcome::Continue
    }

    /// The thread `tcb` faulted: a fault message to its handler if it has
    /// one (the thread then waits for the reply), else [`Outcome::Fault`].
    fn fault(&mut self, tcb: PhysAddr, context: &UserContext, label: u64) -> Outcome {
        let words = [context.rax, context.rdi, context.rip, 0, context.rsp];
        if self.send_fault(tcb, label, words) { Outcome::Continue } else { Outcome::Fault }
    }

    /// The `length` message words: the first eight from registers, the rest
    /// from the thread's IPC buffer (words without a buffer read as 0).
    pub(crate) fn message(
        &self,
        tcb: PhysAddr,
        context: &UserContext,
        length: u8,
    ) -> heapless::Vec<u64, 120> {
        let registers = context.message();
        let buffer = self.ipc_buffer(tcb).map(|(frame, _)| frame);
        let offset = core::mem::offset_of!(strata_abi::bootinfo::IpcBuffer, message) as u64;
        (0..usize::from(length))
            .map(|i| match (registers.get(i), buffer) {
                (Some(&word), _) => word,
                (None, Some(frame)) => self.memory.read(frame.offset(offset + 8 * i as u64)),
                (None, None) => 0,
            })
            .collect()
    }

    /// The capability pointers of the extra capabilities, from the IPC buffer.
    fn extra_caps(&self, tcb: PhysAddr, count: u8) -> Result<heapless::Vec<Slot, 3>, InvocationError> {
        let mut slots = heapless::Vec::new();
        if count == 0 {
            return Ok(slots);
        }
        let (buffer, _) = self.ipc_buffer(tcb).ok_or(InvocationError::InvalidCapability { index: 1 })?;
        let root = self.cap(Self::tcb_slot(tcb, 0));
        for index in 0..count {
            let offset = core::mem::offset_of!(strata_abi::bootinfo::IpcBuffer, caps_or_badges) as u64;
            let pointer = self.memory.read(buffer.offset(offset + 8 * u64::from(index)));
            let (slot, _) = self
                .lookup_cap(root, pointer)
                .map_err(|_| InvocationError::InvalidCapability { index: index + 1 })?;
            let _ = slots.push(slot);
        }
        Ok(slots)
    }

    /// Performs a `Call` on an object capability. `Ok(Some(words))` is a
    /// successful reply; `Ok(None)` means preempted, to be restarted.
    fn call(
        &mut self,
        tcb: PhysAddr,
        context: &UserContext,
    ) -> Result<Option<heapless::Vec<u64, 18>>, InvocationError> {
        let info = MessageInfo::decode(context.rsi);
        let root = self.cap(Self::tcb_slot(tcb, 0));
        let (slot, cap) = self
            .lookup_cap(root, context.rdi)
            .map_err(|failure| InvocationError::FailedLookup { source: true, failure })?;
        let words = self.message(tcb, context, info.length);
        let words = words.as_slice();
        let extra = self.extra_caps(tcb, info.extra_caps)?;
        let label = Label::try_from(info.label).map_err(|_| InvocationError::IllegalOperation)?;
        let mut budget = Budget(PREEMPTION_BUDGET);
        let done = |progress: Progress| match progress {
            Progress::Done => Some(heapless::Vec::new()),
            Progress::Preempted => None,
        };
        match cap {
            Capability::CNode { .. } => {
                let source_root = extra.first().map(|&s| self.cap(s));
                let invocation = self.decode_cnode(cap, label, words, source_root)?;
                Ok(done(self.perform_cnode(invocation, &mut budget)))
            }
            Capability::Untyped { .. } => {
                if label != Label::UntypedRetype {
                    return Err(InvocationError::IllegalOperation);
                }
                let word =
                    |n: usize| words.get(n).copied().ok_or(InvocationError::TruncatedMessage { needed: 6 });
                let root = extra
                    .first()
                    .map(|&s| self.cap(s))
                    .ok_or(InvocationError::InvalidCapability { index: 1 })?;
                let destination = self.lookup_destination(root, word(2)?, word(3)?)?;
                let retype =
                    self.decode_retype(slot, word(0)?, word(1)?, self.cap(destination), word(4)?, word(5)?)?;
                self.perform_retype(&retype);
                Ok(Some(heapless::Vec::new()))
            }
            Capability::Frame { .. }
            | Capability::PageTable { .. }
            | Capability::AsidControl
            | Capability::AsidPool { .. } => {
                let invocation = self.decode_vspace(slot, label, words, &extra)?;
                let reply = match invocation {
                    VSpaceInvocation::GetAddress { address } => {
                        heapless::Vec::from_slice(&[address.get()]).ok()
                    }
                    _ => Some(heapless::Vec::new()),
                };
                self.perform_vspace(invocation);
                Ok(reply)
            }
            Capability::IrqControl | Capability::IrqHandler { .. } => {
                let invocation = self.decode_irq(slot, label, words, &extra)?;
                self.perform_irq(invocation);
                Ok(Some(heapless::Vec::new()))
            }
            Capability::IoPortControl | Capability::IoPort { .. } => {
                let invocation = self.decode_ioport(slot, label, words, &extra)?;
                let value = self.perform_ioport(invocation);
                Ok(Some(value.into_iter().map(u64::from).collect()))
            }
            Capability::Vcpu { .. } => {
                let invocation = self.decode_vcpu(cap, label, words, &extra)?;
                let (values, count) = self.perform_vcpu(invocation);
                Ok(heapless::Vec::from_slice(&values[..count]).ok())
            }
            Capability::Tcb { .. } => {
                let invocation = self.decode_tcb(cap, label, words, &extra)?;
                let reply = self.perform_tcb(invocation);
                // The reply buffer holds exactly the 18 registers.
                Ok(Some(
                    reply.map_or_else(heapless::Vec::new, |r| {
                        heapless::Vec::from_slice(&r).unwrap_or_default()
                    }),
                ))
            }
            // Calls on endpoints are IPC, which arrives with endpoints; a
            // PML4 and a zombie have no invocations.
            Capability::Endpoint { .. }
            | Capability::Notification { .. }
            | Capability::Pml4 { .. }
            | Capability::GuestSpace { .. }
            | Capability::Zombie { .. } => Err(InvocationError::IllegalOperation),
            Capability::Null => Err(InvocationError::FailedLookup {
                source: true,
                failure: LookupFailure::MissingCapability { bits_left: 0 },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::memory::Arena;
    use crate::rootserver;
    use strata_abi::bootinfo::slot;
    use strata_abi::elf::testing::elf;
    use strata_abi::object::ObjectType;

    fn root_task() -> (ObjectSpace<Arena>, PhysAddr) {
        let mut space = ObjectSpace::new(Arena::new(0, 16 << 20));
        let image = elf(0x40_0000, &[(1, 5, 0x1000, 0x40_0000, 0x10, 0x10)], 0x2000);
        let mut free = [(0x40_0000u64, 0x40_0000u64)].into_iter();
        let task = rootserver::create(
            &mut space,
            &image,
            &[],
            PhysAddr(0x10_0000),
            (PhysAddr(0x20_0000), 21),
            &mut free,
        )
        .expect("root task");
        (space, task.tcb)
    }

    /// The slot of the root task's first Untyped, from its boot-info page.
    fn first_untyped_slot(space: &ObjectSpace<Arena>) -> u64 {
        let Capability::Frame { object, .. } =
            space.cap(Slot::in_cnode(PhysAddr(0x10_0000), slot::BOOT_INFO))
        else {
            panic!("no boot-info frame")
        };
        space.memory.read(object.offset(48))
    }

    /// Retypes one `kind` from the first Untyped into root slot `index`
    /// through the system-call layer; returns the reply registers.
    fn retype_into(
        space: &mut ObjectSpace<Arena>,
        tcb: PhysAddr,
        kind: ObjectType,
        index: u64,
    ) -> UserContext {
        let untyped = first_untyped_slot(space);
        set_extra(space, tcb, &[slot::CNODE]);
        let mut context =
            call(Label::UntypedRetype, untyped, &[kind as u64, 0, slot::CNODE, 64, index, 1], 1);
        assert_eq!(syscall(space, tcb, &mut context), Outcome::Continue);
        context
    }

    fn call(label: Label, cptr: u64, words: &[u64], extra: u8) -> UserContext {
        let mut context = UserContext {
            rax: Syscall::Call as u64,
            rdi: cptr,
            rsi: MessageInfo::new(label as u64, extra, words.len() as u8).encode().expect("fits"),
            rip: 0x40_0002,
            ..UserContext::default()
        };
        context.set_message(words);
        context
    }

    fn set_extra(space: &mut ObjectSpace<Arena>, tcb: PhysAddr, caps: &[u64]) {
        let (buffer, _) = space.ipc_buffer(tcb).expect("IPC buffer");
        for (i, &cap) in caps.iter().enumerate() {
            space.memory.write(buffer.offset(8 * (122 + i as u64)), cap);
        }
    }

    /// Makes the system call `context` describes, as the kernel does: the
    /// registers go into the TCB, and come back from it.
    fn syscall(space: &mut ObjectSpace<Arena>, tcb: PhysAddr, context: &mut UserContext) -> Outcome {
        space.set_context(tcb, context);
        let outcome = space.handle_syscall(tcb);
        *context = space.context(tcb);
        outcome
    }

    fn label(context: &UserContext) -> u64 {
        MessageInfo::decode(context.rsi).label
    }

    #[test]
    fn calls_reach_objects_and_replies_carry_results_or_errors() {
        let (mut space, tcb) = root_task();
        // Retype an endpoint from the first Untyped into slot 100.
        let context = retype_into(&mut space, tcb, ObjectType::Endpoint, 100);
        assert_eq!(
            label(&context),
            0,
            "retype failed: {:?}",
            InvocationError::decode(label(&context), [context.rdx, context.r8, context.r9, context.r10])
        );
        assert!(matches!(space.cap(Slot::in_cnode(PhysAddr(0x10_0000), 100)), Capability::Endpoint { .. }));
        // The same again: the slot is taken, and the error comes back decoded.
        let context = retype_into(&mut space, tcb, ObjectType::Endpoint, 100);
        assert_eq!(
            InvocationError::decode(label(&context), [context.rdx, context.r8, context.r9, context.r10]),
            Some(InvocationError::DeleteFirst)
        );
        // A frame's address comes back in the first reply word.
        let mut context = call(Label::FrameGetAddress, slot::IPC_BUFFER, &[], 0);
        let _ = syscall(&mut space, tcb, &mut context);
        let (buffer, _) = space.ipc_buffer(tcb).expect("buffer");
        assert_eq!((label(&context), context.rdx), (0, buffer.get()));
        // An empty slot, an unknown label, a bad syscall number.
        let mut context = call(Label::CNodeDelete, 3000, &[], 0);
        let _ = syscall(&mut space, tcb, &mut context);
        assert_eq!(
            label(&context),
            InvocationError::FailedLookup { source: true, failure: LookupFailure::InvalidRoot }.code()
        );
        let mut context = call(Label::CNodeDelete, slot::CNODE, &[], 0);
        context.rsi = MessageInfo::new(999, 0, 0).encode().expect("fits");
        let _ = syscall(&mut space, tcb, &mut context);
        assert_eq!(label(&context), InvocationError::IllegalOperation.code());
        let mut bogus = UserContext { rax: 77, ..UserContext::default() };
        assert_eq!(syscall(&mut space, tcb, &mut bogus), Outcome::Fault);
        // Debug calls.
        let mut put =
            UserContext { rax: Syscall::DebugPutChar as u64, rdi: b'x' as u64, ..UserContext::default() };
        assert_eq!(syscall(&mut space, tcb, &mut put), Outcome::PutChar(b'x'));
    }

    #[test]
    fn read_registers_returns_what_write_registers_set_through_the_ipc_buffer() {
        let (mut space, tcb) = root_task();
        let context = retype_into(&mut space, tcb, ObjectType::Tcb, 100);
        assert_eq!(label(&context), 0);
        // Registers 0..18 take the values 0x100 + n, except rip, rsp and rflags.
        let mut registers: Vec<u64> = (0..18).map(|n| 0x100 + n).collect();
        registers[15] = 0x40_1000;
        registers[16] = 0x7000_0000_0000;
        registers[17] = 0x202 | 1; // IF and CF
        let (buffer, _) = space.ipc_buffer(tcb).expect("buffer");
        for (i, &word) in registers.iter().enumerate().skip(8) {
            space.memory.write(buffer.offset(8 * (1 + i as u64)), word);
        }
        let mut write = call(Label::TcbWriteRegisters, 100, &registers[..6], 0);
        write.rsi = MessageInfo::new(Label::TcbWriteRegisters as u64, 0, 18).encode().expect("fits");
        (write.r14, write.r15) = (registers[6], registers[7]);
        let _ = syscall(&mut space, tcb, &mut write);
        assert_eq!(label(&write), 0);
        for i in 8..18 {
            space.memory.write(buffer.offset(8 * (1 + i)), 0);
        }
        let mut read = call(Label::TcbReadRegisters, 100, &[], 0);
        let _ = syscall(&mut space, tcb, &mut read);
        let info = MessageInfo::decode(read.rsi);
        assert_eq!((info.label, info.length), (0, 18));
        let mut got = read.message().to_vec();
        got.extend((8..18).map(|i| space.memory.read(buffer.offset(8 * (1 + i)))));
        assert_eq!(got, registers);
    }

    #[test]
    fn a_preempted_revoke_restarts_the_call() {
        let (mut space, tcb) = root_task();
        let untyped_slot = first_untyped_slot(&space) + 1;
        // Many children: more than one budget's worth of work.
        set_extra(&mut space, tcb, &[slot::CNODE]);
        for n in 0..3u64 {
            let mut context = call(
                Label::UntypedRetype,
                untyped_slot,
                &[ObjectType::Endpoint as u64, 0, slot::CNODE, 64, 200 + 256 * n, 256],
                1,
            );
            let _ = syscall(&mut space, tcb, &mut context);
            assert_eq!(label(&context), 0);
        }
        let mut context = call(Label::CNodeRevoke, slot::CNODE, &[untyped_slot, 64], 0);
        let mut restarts = 0;
        loop {
            let rip = context.rip;
            let _ = syscall(&mut space, tcb, &mut context);
            if context.rip == rip {
                break;
            }
            assert_eq!(context.rip, rip - 2, "a preempted call backs up onto its syscall");
            context.rip = rip;
            restarts += 1;
        }
        assert!(restarts >= 2, "768 deletions with a budget of {PREEMPTION_BUDGET} must be preempted");
        assert_eq!(label(&context), 0);
        assert!(!space.has_children(Slot::in_cnode(PhysAddr(0x10_0000), untyped_slot)));
    }
}
