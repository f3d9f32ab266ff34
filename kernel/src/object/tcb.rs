//! Threads: the TCB object, the scheduler's run queues, and the TCB
//! invocations (after seL4's non-MCS TCB).
//!
//! A TCB is a 4 KiB object laid out as follows. Offsets are in [`layout`].
//!
//! | offset | size | contents |
//! |---|---|---|
//! | 0x000 | 160 | user register context ([`UserContext`]) |
//! | 0x0a0 | 8 | thread state |
//! | 0x0a8 | 8 | priority (bits 0–7), maximum controlled priority (bits 8–15) |
//! | 0x0b0 | 8 | IPC buffer address in the thread's address space |
//! | 0x0c0 | 16 | queue links (next, previous TCB): run queue or an endpoint/notification queue |
//! | 0x0d0 | 8 | the endpoint or notification the thread is blocked on |
//! | 0x0d8 | 8 | the badge of a queued send |
//! | 0x0e0 | 8 | IPC flags of a queued send (call, grant, grant-reply) |
//! | 0x0e8 | 8 | the caller this thread must reply to |
//! | 0x0f0 | 8 | the thread a caller blocked on reply waits for |
//! | 0x0f8 | 8 | the bound notification |
//! | 0x100 | 8 | the fault endpoint's capability pointer (0: none) |
//! | 0x108 | 48 | a queued fault message: five words and the label |
//! | 0x138 | 8 | the bound VCPU (0: none) |
//! | 0x180 | 128 | four capability slots: CSpace root, VSpace root, IPC buffer frame, GuestSpace |
//! | 0x200 | 3584 | XSAVE area for the thread's x87, SSE and AVX state |
//!
//! The capability slots are real slots in the derivation tree. The IPC
//! buffer's frame is held there as a capability, so the frame cannot be
//! reused while the thread can still write to it: revoking the memory it
//! came from deletes the TCB's copy too, and the thread then has no
//! buffer. When the last capability to a TCB is deleted, the thread is
//! taken off the run queues and the TCB capability becomes a zombie
//! covering its slots. The CNode machinery in `delete` then empties them,
//! in bounded steps.
//!
//! The scheduler has fixed priorities 0–255 with round robin within a
//! priority. One bit per priority says which queues are non-empty, so
//! choosing the next thread is a find-first-set, not a scan.

use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use zerocopy::{FromBytes, IntoBytes};

use super::{Capability, ObjectSpace, PhysicalMemory, Slot};
use crate::addr::PhysAddr;

/// Offsets within a TCB.
pub mod layout {
    /// The saved user registers.
    pub const CONTEXT: u64 = 0x000;
    /// [`super::ThreadState`].
    pub const STATE: u64 = 0x0a0;
    /// Priority and maximum controlled priority.
    pub const PRIORITY: u64 = 0x0a8;
    /// IPC buffer virtual address.
    pub const IPC_BUFFER: u64 = 0x0b0;
    /// Next TCB in the run queue.
    pub const QUEUE_NEXT: u64 = 0x0c0;
    /// Previous TCB in the run queue.
    pub const QUEUE_PREV: u64 = 0x0c8;
    /// The object a blocked thread waits on.
    pub const BLOCKED_ON: u64 = 0x0d0;
    /// The badge of a queued send.
    pub const SEND_BADGE: u64 = 0x0d8;
    /// Flags of a queued send (`ipc::flags`).
    pub const SEND_FLAGS: u64 = 0x0e0;
    /// The caller to reply to.
    pub const REPLY_TO: u64 = 0x0e8;
    /// For a caller blocked on its reply: who will reply.
    pub const REPLIER: u64 = 0x0f0;
    /// The bound notification.
    pub const BOUND_NOTIFICATION: u64 = 0x0f8;
    /// The fault endpoint's capability pointer.
    pub const FAULT_ENDPOINT: u64 = 0x100;
    /// A queued fault message's words (`ipc::FAULT_WORDS` of them).
    pub const FAULT_WORDS: u64 = 0x108;
    /// A queued fault message's label.
    pub const FAULT_LABEL: u64 = 0x130;
    /// The bound VCPU, or 0.
    pub const VCPU: u64 = 0x138;
    /// The IPC fastpath's last lookup (`arch::x86_64::fastpath`): the
    /// CSpace root's two words and the CPtr it resolved, then the slot
    /// (physical). Word 0 starts as no capability's word 0.
    pub const LOOKUP_CACHE: u64 = 0x140;
    /// For the IPC fastpath, what the last switch to this thread found
    /// valid (`Runtime::switch_to`): the VSpace's word 0, its CR3 value
    /// (without the no-flush bit) and `vspace::ASID_EPOCH`. Word 0 starts
    /// as no capability's word 0.
    pub const CR3_CACHE: u64 = 0x160;
    /// The capability slots: CSpace root, VSpace root, IPC buffer frame, GuestSpace.
    pub const SLOTS: u64 = 0x180;
    /// The XSAVE area (64-byte aligned, to the end of the TCB).
    pub const FPU: u64 = 0x200;
}

/// Offsets of saved registers in a TCB (`UserContext` order).
pub mod register {
    use super::UserContext;
    use super::layout::CONTEXT;
    use core::mem::offset_of;
    /// RAX.
    pub const RAX: u64 = CONTEXT + offset_of!(UserContext, rax) as u64;
    /// RSI (the message info word).
    pub const RSI: u64 = CONTEXT + offset_of!(UserContext, rsi) as u64;
    /// RDI (capability pointer or badge).
    pub const RDI: u64 = CONTEXT + offset_of!(UserContext, rdi) as u64;
    use crate::object::tcb::MESSAGE_REGISTER_OFFSETS as OFFSETS;
    /// The message registers, in message order.
    pub const MESSAGE: [u64; 8] = {
        let mut offsets = OFFSETS;
        let mut i = 0;
        while i < offsets.len() {
            offsets[i] += CONTEXT;
            i += 1;
        }
        offsets
    };
}

/// Radix of the TCB's slot array (four slots).
pub const TCB_SLOTS_RADIX: u8 = 2;
/// The TCB slot holding the IPC buffer's frame.
pub const BUFFER_SLOT: u64 = 2;
/// The TCB slot holding the GuestSpace its VCPU runs in.
pub const SPACE_SLOT: u64 = 3;

/// User registers, in the order the kernel-entry stubs save them: the
/// general registers, then an IRET frame (rip, cs, rflags, rsp, ss), so that
/// returning to user mode is popping the registers and `iretq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes)]
#[repr(C)]
#[allow(missing_docs)] // Register names.
pub struct UserContext {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Words in a [`UserContext`].
pub const CONTEXT_WORDS: usize = 20;
/// Its general registers, RAX to R15, before the IRET-frame tail.
pub const GENERAL_REGISTERS: usize = 15;
/// Registers `TcbWriteRegisters` sets: all but the segment selectors.
pub const WRITABLE_REGISTERS: usize = 18;
/// The user code segment selector (GDT entry 4, RPL 3).
pub const USER_CODE_SELECTOR: u64 = 0x23;
/// The user data segment selector (GDT entry 3, RPL 3).
pub const USER_DATA_SELECTOR: u64 = 0x1b;

/// RFLAGS bits user space may set: CF, PF, AF, ZF, SF, DF, OF (and bit 1,
/// which is always set). IF is always set; IOPL, TF, NT, AC and the rest
/// are always clear.
const USER_FLAGS: u64 = 0b1100_1101_0101;
const FLAG_IF: u64 = 1 << 9;
const FLAG_RESERVED: u64 = 1 << 1;

/// Where the message registers (RDX, R8, R9, R10, R12, R13, R14, R15, in
/// message order) are in a [`UserContext`], in bytes.
pub const MESSAGE_REGISTER_OFFSETS: [u64; 8] = {
    use core::mem::offset_of;
    [
        offset_of!(UserContext, rdx) as u64,
        offset_of!(UserContext, r8) as u64,
        offset_of!(UserContext, r9) as u64,
        offset_of!(UserContext, r10) as u64,
        offset_of!(UserContext, r12) as u64,
        offset_of!(UserContext, r13) as u64,
        offset_of!(UserContext, r14) as u64,
        offset_of!(UserContext, r15) as u64,
    ]
};

impl UserContext {
    /// The message registers, in message order.
    pub fn message(&self) -> [u64; 8] {
        [self.rdx, self.r8, self.r9, self.r10, self.r12, self.r13, self.r14, self.r15]
    }

    /// Sets the first `words.len()` message registers (at most eight) to
    /// `words`; the others keep their values.
    pub fn set_message(&mut self, words: &[u64]) {
        let registers = [
            &mut self.rdx,
            &mut self.r8,
            &mut self.r9,
            &mut self.r10,
            &mut self.r12,
            &mut self.r13,
            &mut self.r14,
            &mut self.r15,
        ];
        for (register, &word) in registers.into_iter().zip(words) {
            *register = word;
        }
    }

    /// The context with values only the thread itself could have set made
    /// safe to return to: a non-canonical or kernel-half instruction
    /// pointer becomes 0 (the thread faults in user mode instead of the
    /// return faulting in the kernel), and RFLAGS is limited to the user bits.
    pub fn sanitised(mut self) -> Self {
        if self.rip >= strata_abi::object::USER_TOP {
            self.rip = 0;
        }
        self.rflags = (self.rflags & USER_FLAGS) | FLAG_IF | FLAG_RESERVED;
        self.cs = USER_CODE_SELECTOR;
        self.ss = USER_DATA_SELECTOR;
        self
    }

    /// The registers as words, in field order.
    pub(crate) fn words(&self) -> [u64; CONTEXT_WORDS] {
        zerocopy::transmute!(*self)
    }

    /// The registers `TcbReadRegisters` gives, in the order
    /// `TcbWriteRegisters` takes them: rax..r15, rip, rsp, rflags.
    pub fn to_writable(&self) -> [u64; WRITABLE_REGISTERS] {
        let all = self.words();
        let mut w = [0u64; WRITABLE_REGISTERS];
        w[..GENERAL_REGISTERS].copy_from_slice(&all[..GENERAL_REGISTERS]);
        w[15] = all[15]; // rip
        w[16] = all[18]; // rsp
        w[17] = all[17]; // rflags
        w
    }

    /// A context from the registers `TcbWriteRegisters` takes: rax..r15,
    /// rip, rsp, rflags.
    fn from_writable(w: [u64; WRITABLE_REGISTERS]) -> Self {
        let mut all = [0u64; CONTEXT_WORDS];
        all[..GENERAL_REGISTERS].copy_from_slice(&w[..GENERAL_REGISTERS]);
        all[15] = w[15]; // rip
        all[17] = w[17]; // rflags
        all[18] = w[16]; // rsp
        Self::from_words(all)
    }

    /// A context from its words, in field order.
    pub(crate) fn from_words(words: [u64; CONTEXT_WORDS]) -> Self {
        zerocopy::transmute!(words)
    }
}

/// What a thread is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum ThreadState {
    /// Not running and not waiting: never started, or suspended.
    Inactive = 0,
    /// Runnable (running, or in a run queue).
    Runnable = 1,
    /// Queued to send on an endpoint.
    BlockedOnSend = 2,
    /// Queued to receive on an endpoint.
    BlockedOnReceive = 3,
    /// Waiting for the reply to a call.
    BlockedOnReply = 4,
    /// Waiting for a notification.
    BlockedOnNotification = 5,
}

impl ThreadState {
    fn from_word(word: u64) -> Self {
        match word {
            1 => Self::Runnable,
            2 => Self::BlockedOnSend,
            3 => Self::BlockedOnReceive,
            4 => Self::BlockedOnReply,
            5 => Self::BlockedOnNotification,
            _ => Self::Inactive,
        }
    }
}

/// Priorities: 0 to 255.
pub const PRIORITIES: usize = 256;

/// The run queues.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C)]
pub struct Scheduler {
    /// The first and last TCB of each queue, 0 for none (no TCB lies at
    /// physical address 0; the TCBs' own queue links use 0 the same way).
    /// The IPC fastpath finds `tails` and `nonempty` after `heads`.
    heads: [u64; PRIORITIES],
    tails: [u64; PRIORITIES],
    /// Bit p set: queue p is not empty.
    nonempty: [u64; 4],
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl Scheduler {
    /// Empty queues.
    pub const fn new() -> Self {
        Self { heads: [0; PRIORITIES], tails: [0; PRIORITIES], nonempty: [0; 4] }
    }

    /// Where the queue heads lie, for the IPC fastpath.
    pub fn queue_heads(&mut self) -> *mut u64 {
        self.heads.as_mut_ptr()
    }

    /// The heads of the non-empty run queues (tests and fuzzing).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn heads(&self) -> impl Iterator<Item = PhysAddr> + '_ {
        self.heads.iter().filter(|&&head| head != 0).map(|&head| PhysAddr(head))
    }

    /// The highest priority with a runnable thread.
    pub fn highest(&self) -> Option<u8> {
        Self::highest_in(&self.nonempty)
    }

    /// Whether `tcb` is the only thread queued at `priority` and no thread
    /// is runnable above it.
    pub fn alone_at_top(&self, tcb: PhysAddr, priority: u8) -> bool {
        let p = usize::from(priority);
        let word = p / 64;
        self.heads[p] == tcb.get()
            && self.tails[p] == tcb.get()
            && self.nonempty[word] >> (p % 64) == 1
            && self.nonempty[word + 1..].iter().all(|&bits| bits == 0)
    }

    fn highest_in(nonempty: &[u64; 4]) -> Option<u8> {
        (0..4).rev().find_map(|word| {
            let bits = nonempty[word];
            (bits != 0).then(|| (word * 64 + 63 - bits.leading_zeros() as usize) as u8)
        })
    }
}

/// A checked TCB invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcbInvocation {
    /// Install `cspace` and `vspace` (copies of the capabilities in those
    /// slots) and the IPC buffer.
    Configure {
        /// The TCB.
        tcb: PhysAddr,
        /// Slot of the new CSpace root capability.
        cspace: Slot,
        /// Slot of the new VSpace root capability.
        vspace: Slot,
        /// IPC buffer address.
        ipc_buffer: u64,
        /// Slot of the IPC buffer's frame capability, if any.
        ipc_buffer_frame: Option<Slot>,
        /// Capability pointer of the fault endpoint (0: none).
        fault_endpoint: u64,
    },
    /// Bind a notification.
    Bind {
        /// The TCB.
        tcb: PhysAddr,
        /// The notification.
        notification: PhysAddr,
    },
    /// Undo a binding.
    Unbind {
        /// The TCB.
        tcb: PhysAddr,
    },
    /// Reply with the thread's registers.
    ReadRegisters {
        /// The TCB.
        tcb: PhysAddr,
    },
    /// Set priority and maximum controlled priority.
    SetPriority {
        /// The TCB.
        tcb: PhysAddr,
        /// The new priority.
        priority: u8,
        /// The new maximum controlled priority.
        max: u8,
    },
    /// Replace the registers.
    WriteRegisters {
        /// The TCB.
        tcb: PhysAddr,
        /// The new registers (sanitised).
        context: UserContext,
    },
    /// Make the thread runnable.
    Resume {
        /// The TCB.
        tcb: PhysAddr,
    },
    /// Stop the thread.
    Suspend {
        /// The TCB.
        tcb: PhysAddr,
    },
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// The saved registers of the thread `tcb`.
    pub fn context(&self, tcb: PhysAddr) -> UserContext {
        let mut words = [0; CONTEXT_WORDS];
        for (i, word) in words.iter_mut().enumerate() {
            *word = self.memory.read(tcb.offset(layout::CONTEXT + 8 * i as u64));
        }
        UserContext::from_words(words)
    }

    /// Saves registers into the thread `tcb`.
    pub fn set_context(&mut self, tcb: PhysAddr, context: &UserContext) {
        for (i, word) in context.words().iter().enumerate() {
            self.memory.write(tcb.offset(layout::CONTEXT + 8 * i as u64), *word);
        }
    }

    /// The thread's state.
    pub fn thread_state(&self, tcb: PhysAddr) -> ThreadState {
        ThreadState::from_word(self.memory.read(tcb.offset(layout::STATE)))
    }

    /// Sets the thread's state word (queue membership is the caller's business).
    pub(super) fn set_thread_state(&mut self, tcb: PhysAddr, state: ThreadState) {
        self.memory.write(tcb.offset(layout::STATE), state as u64);
    }

    /// The thread's priority and maximum controlled priority.
    pub fn priority(&self, tcb: PhysAddr) -> (u8, u8) {
        let word = self.memory.read(tcb.offset(layout::PRIORITY));
        (word as u8, (word >> 8) as u8)
    }

    /// The thread's CSpace root slot (the VSpace root slot is the next one).
    pub const fn tcb_slot(tcb: PhysAddr, index: u64) -> Slot {
        Slot::in_cnode(PhysAddr(tcb.get() + layout::SLOTS), index)
    }

    /// The thread's IPC buffer: the physical address of the buffer (in
    /// the frame its TCB holds) and its virtual address.
    pub fn ipc_buffer(&self, tcb: PhysAddr) -> Option<(PhysAddr, u64)> {
        let frame = super::cap::raw::frame(self.slot_words(Self::tcb_slot(tcb, BUFFER_SLOT)))?;
        let address = self.memory.read(tcb.offset(layout::IPC_BUFFER));
        Some((frame.offset(address & 0xfff), address))
    }

    /// Puts the thread at the tail of its priority's run queue.
    pub fn enqueue(&mut self, tcb: PhysAddr) {
        let (priority, _) = self.priority(tcb);
        let p = usize::from(priority);
        self.memory.write(tcb.offset(layout::STATE), ThreadState::Runnable as u64);
        self.memory.write(tcb.offset(layout::QUEUE_NEXT), 0);
        let tail = self.scheduler.tails[p];
        self.memory.write(tcb.offset(layout::QUEUE_PREV), tail);
        match tail {
            0 => self.scheduler.heads[p] = tcb.get(),
            tail => self.memory.write(PhysAddr(tail).offset(layout::QUEUE_NEXT), tcb.get()),
        }
        self.scheduler.tails[p] = tcb.get();
        self.scheduler.nonempty[p / 64] |= 1 << (p % 64);
    }

    /// Takes the thread out of its run queue, if it is in one, and marks it inactive.
    pub fn dequeue(&mut self, tcb: PhysAddr) {
        if self.thread_state(tcb) != ThreadState::Runnable {
            return;
        }
        let (priority, _) = self.priority(tcb);
        let p = usize::from(priority);
        let next = self.memory.read(tcb.offset(layout::QUEUE_NEXT));
        let prev = self.memory.read(tcb.offset(layout::QUEUE_PREV));
        match prev {
            0 => self.scheduler.heads[p] = next,
            prev => self.memory.write(PhysAddr(prev).offset(layout::QUEUE_NEXT), next),
        }
        match next {
            0 => self.scheduler.tails[p] = prev,
            next => self.memory.write(PhysAddr(next).offset(layout::QUEUE_PREV), prev),
        }
        if self.scheduler.heads[p] == 0 {
            self.scheduler.nonempty[p / 64] &= !(1 << (p % 64));
        }
        self.memory.write(tcb.offset(layout::STATE), ThreadState::Inactive as u64);
        self.memory.write(tcb.offset(layout::QUEUE_NEXT), 0);
        self.memory.write(tcb.offset(layout::QUEUE_PREV), 0);
    }

    /// The thread to run next: the head of the highest non-empty queue.
    /// `None` if nothing is runnable.
    pub fn choose_thread(&self) -> Option<PhysAddr> {
        let priority = self.scheduler.highest()?;
        Some(PhysAddr(self.scheduler.heads[usize::from(priority)]))
    }

    /// The thread to run after a kernel entry by `current` (if any). With
    /// `rotate` (a yield, or the end of a time slice) `current` first goes
    /// to the back of its queue. Then the head of the highest non-empty
    /// queue runs. A running thread is the head of its own queue, so it
    /// goes on unless a thread of higher priority has become runnable,
    /// which then runs at once (and `current` resumes first among its
    /// equals later).
    pub fn next_thread(&mut self, current: Option<PhysAddr>, rotate: bool) -> Option<PhysAddr> {
        if let (true, Some(current)) = (rotate, current) {
            self.rotate(current);
        }
        self.choose_thread()
    }

    /// Whether `tcb` is the only runnable thread at the highest runnable
    /// priority: then a yield would choose it again, and is a no-op.
    pub fn runs_alone(&self, tcb: PhysAddr) -> bool {
        self.scheduler.alone_at_top(tcb, self.priority(tcb).0)
    }

    /// Moves a runnable thread to the tail of its queue (it yielded or its
    /// time slice ended): round robin within a priority.
    pub fn rotate(&mut self, tcb: PhysAddr) {
        if self.thread_state(tcb) == ThreadState::Runnable {
            self.dequeue(tcb);
            self.enqueue(tcb);
        }
    }

    /// Prepares a newly retyped TCB (memory is already zero): priority 0,
    /// inactive, FPU state at its reset values.
    pub(super) fn init_tcb(&mut self, tcb: PhysAddr) {
        // Reset state: FCW 0x37f, MXCSR 0x1f80 with its mask; the zero XSAVE
        // header marks every component as in its initial state.
        self.memory.write(tcb.offset(layout::FPU), 0x037f);
        self.memory.write(tcb.offset(layout::FPU + 24), 0x0000_ffff_0000_1f80);
        self.set_context(tcb, &UserContext::default().sanitised());
        for cache in [layout::LOOKUP_CACHE, layout::CR3_CACHE] {
            self.memory.write(tcb.offset(cache), u64::MAX);
        }
    }

    /// Releases a TCB whose last capability is being deleted: it leaves the
    /// run queues. Its two slots are emptied afterwards through a zombie.
    pub(super) fn finalise_tcb(&mut self, tcb: PhysAddr) {
        self.suspend(tcb);
        self.unbind_notification(tcb);
        self.unbind_tcb_vcpu(tcb);
    }

    /// Stops a thread: out of any run, endpoint or notification queue, no
    /// longer waiting for or owing a reply.
    pub fn suspend(&mut self, tcb: PhysAddr) {
        self.cancel_ipc(tcb);
        self.dequeue(tcb);
        self.set_thread_state(tcb, ThreadState::Inactive);
    }

    /// Decodes an invocation on the TCB capability `cap`; `extra` are the
    /// slots of the extra capabilities.
    pub fn decode_tcb(
        &self,
        cap: Capability,
        label: Label,
        words: &[u64],
        extra: &[Slot],
    ) -> Result<TcbInvocation, InvocationError> {
        let Capability::Tcb { object: tcb } = cap else {
            return Err(InvocationError::InvalidCapability { index: 0 });
        };
        let word =
            |n: usize, needed: u8| words.get(n).copied().ok_or(InvocationError::TruncatedMessage { needed });
        let extra_slot =
            |n: usize| extra.get(n).copied().ok_or(InvocationError::InvalidCapability { index: n as u8 + 1 });
        match label {
            Label::TcbConfigure => {
                let ipc_buffer = word(0, 1)?;
                let cspace = extra_slot(0)?;
                let vspace = extra_slot(1)?;
                if !matches!(self.cap(cspace), Capability::CNode { .. }) {
                    return Err(InvocationError::InvalidCapability { index: 1 });
                }
                if !matches!(self.cap(vspace), Capability::Pml4 { asid: Some(_), .. }) {
                    return Err(InvocationError::InvalidCapability { index: 2 });
                }
                // The embedded slots must be free: reconfiguring a thread means
                // deleting its old roots first (a preemptible operation of its own).
                if (0..=BUFFER_SLOT).any(|n| !self.cap(Self::tcb_slot(tcb, n)).is_null()) {
                    return Err(InvocationError::DeleteFirst);
                }
                let ipc_buffer_frame = match extra.get(2).map(|&s| (s, self.cap(s))) {
                    None => None,
                    Some((frame, Capability::Frame { mapping: Some(m), rights, .. }))
                        if m.address == ipc_buffer & !0xfff
                            && rights.contains(
                                strata_abi::object::Rights::READ | strata_abi::object::Rights::WRITE,
                            ) =>
                    {
                        if ipc_buffer % 8 != 0
                            || (ipc_buffer & 0xfff)
                                + core::mem::size_of::<strata_abi::bootinfo::IpcBuffer>() as u64
                                > 4096
                        {
                            return Err(InvocationError::AlignmentError);
                        }
                        Some(frame)
                    }
                    Some(_) => return Err(InvocationError::InvalidCapability { index: 3 }),
                };
                let fault_endpoint = words.get(1).copied().unwrap_or(0);
                Ok(TcbInvocation::Configure {
                    tcb,
                    cspace,
                    vspace,
                    ipc_buffer,
                    ipc_buffer_frame,
                    fault_endpoint,
                })
            }
            Label::TcbSetPriority => {
                let authority = extra_slot(0)?;
                let Capability::Tcb { object: authority } = self.cap(authority) else {
                    return Err(InvocationError::InvalidCapability { index: 1 });
                };
                let (_, limit) = self.priority(authority);
                let priority = word(0, 2)?;
                let max = word(1, 2)?;
                if priority > u64::from(limit) || max > u64::from(limit) {
                    return Err(InvocationError::RangeError { min: 0, max: u64::from(limit) });
                }
                Ok(TcbInvocation::SetPriority { tcb, priority: priority as u8, max: max as u8 })
            }
            Label::TcbWriteRegisters => {
                let mut values = [0u64; WRITABLE_REGISTERS];
                for (i, value) in values.iter_mut().enumerate() {
                    *value = word(i, WRITABLE_REGISTERS as u8)?;
                }
                Ok(TcbInvocation::WriteRegisters {
                    tcb,
                    context: UserContext::from_writable(values).sanitised(),
                })
            }
            Label::TcbResume => {
                if self.cap(Self::tcb_slot(tcb, 1)).is_null() {
                    // A thread without an address space cannot run.
                    return Err(InvocationError::IllegalOperation);
                }
                Ok(TcbInvocation::Resume { tcb })
            }
            Label::TcbSuspend => Ok(TcbInvocation::Suspend { tcb }),
            Label::TcbBindNotification => {
                let Capability::Notification { object, rights, .. } = self.cap(extra_slot(0)?) else {
                    return Err(InvocationError::InvalidCapability { index: 1 });
                };
                if !rights.contains(strata_abi::object::Rights::READ) {
                    return Err(InvocationError::InvalidCapability { index: 1 });
                }
                if self.bound(tcb).is_some() || self.notification_bound(object) {
                    return Err(InvocationError::IllegalOperation);
                }
                Ok(TcbInvocation::Bind { tcb, notification: object })
            }
            Label::TcbUnbindNotification => Ok(TcbInvocation::Unbind { tcb }),
            Label::TcbReadRegisters => Ok(TcbInvocation::ReadRegisters { tcb }),
            _ => Err(InvocationError::IllegalOperation),
        }
    }

    /// Performs a decoded TCB invocation. Returns the reply's words: the
    /// registers for `ReadRegisters`, none otherwise.
    pub fn perform_tcb(&mut self, invocation: TcbInvocation) -> Option<[u64; WRITABLE_REGISTERS]> {
        match invocation {
            TcbInvocation::Configure {
                tcb,
                cspace,
                vspace,
                ipc_buffer,
                ipc_buffer_frame,
                fault_endpoint,
            } => {
                self.memory.write(tcb.offset(layout::FAULT_ENDPOINT), fault_endpoint);
                let (cspace_cap, vspace_cap) = (self.cap(cspace), self.cap(vspace));
                self.insert_derived(cspace, Self::tcb_slot(tcb, 0), cspace_cap);
                self.insert_derived(vspace, Self::tcb_slot(tcb, 1), vspace_cap);
                self.memory.write(tcb.offset(layout::IPC_BUFFER), ipc_buffer);
                // The TCB keeps a copy of the frame capability (unmapped,
                // as every copy starts), so the frame outlives its use.
                if let Some(frame) = ipc_buffer_frame
                    && let Capability::Frame { object, size, rights, device, .. } = self.cap(frame)
                {
                    let copy = Capability::Frame { object, size, rights, device, mapping: None };
                    self.insert_derived(frame, Self::tcb_slot(tcb, BUFFER_SLOT), copy);
                }
            }
            TcbInvocation::SetPriority { tcb, priority, max } => {
                let runnable = self.thread_state(tcb) == ThreadState::Runnable;
                if runnable {
                    self.dequeue(tcb);
                }
                self.memory.write(tcb.offset(layout::PRIORITY), u64::from(priority) | u64::from(max) << 8);
                if runnable {
                    self.enqueue(tcb);
                }
            }
            TcbInvocation::WriteRegisters { tcb, context } => self.set_context(tcb, &context),
            TcbInvocation::Resume { tcb } => {
                // A thread blocked in IPC is woken by IPC, not by resume.
                if self.thread_state(tcb) == ThreadState::Inactive {
                    self.enqueue(tcb);
                }
            }
            TcbInvocation::Suspend { tcb } => self.suspend(tcb),
            TcbInvocation::Bind { tcb, notification } => self.bind_notification(tcb, notification),
            TcbInvocation::Unbind { tcb } => self.unbind_notification(tcb),
            TcbInvocation::ReadRegisters { tcb } => return Some(self.context(tcb).to_writable()),
        }
        None
    }
}
