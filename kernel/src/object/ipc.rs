//! Endpoints and notifications: synchronous IPC with badges, calls and
//! replies, capability transfer, asynchronous signals, and fault messages
//! (after seL4's non-MCS kernel).
//!
//! - **Endpoint** (16 bytes): the head and tail of a queue of threads. The
//!   queue holds either senders or receivers, and the head thread's state
//!   says which.
//! - **Notification** (32 bytes): the bound TCB, the notification word, and
//!   the head and tail of its queue of waiters.
//! - **Queue links.** A blocked thread is in exactly one queue: an endpoint
//!   queue, a notification queue, or none (blocked on a reply). So queues
//!   reuse the TCB's run-queue links.
//!
//! A message is its info word (label, length, extra capabilities), its
//! words (the first 8 in registers, the rest in the IPC buffer) and the
//! badge of the capability it was sent through.
//!
//! **Calls and replies.** A call leaves the receiver a reply link to the
//! caller; the caller waits until `Reply`. Without the grant or grant-reply
//! right a call cannot be replied to, and the caller becomes inactive, as
//! in seL4.
//!
//! **Capabilities.** With the grant right, the first extra capability that
//! is not to the endpoint itself is copied into the receiver's receive
//! slot. Capabilities to the same endpoint are unwrapped: the receiver gets
//! their badges.

use strata_abi::bootinfo::IpcBuffer;
use strata_abi::message::{MessageInfo, REGISTER_WORDS};
use strata_abi::object::Rights;

use super::tcb::{ThreadState, UserContext, layout};
use super::{Capability, ObjectSpace, PhysicalMemory};
use crate::addr::PhysAddr;

/// Flags of a queued send.
pub mod flags {
    /// The send is a call: the sender waits for a reply.
    pub const CALL: u64 = 1 << 0;
    /// The sender's capability had the grant right.
    pub const GRANT: u64 = 1 << 1;
    /// The sender's capability had the grant-reply right.
    pub const GRANT_REPLY: u64 = 1 << 2;
    /// The "message" is a fault, kept in the TCB's fault words.
    pub const FAULT: u64 = 1 << 3;
}

/// Label of a fault message: a user-mode exception.
pub const FAULT_EXCEPTION: u64 = strata_abi::fault::EXCEPTION;
/// Label of a fault message: an unknown system call or an invalid capability.
pub const FAULT_SYSCALL: u64 = strata_abi::fault::SYSCALL;
/// Words of a fault message, kept in the TCB while the fault is queued.
pub const FAULT_WORDS: usize = strata_abi::fault::WORDS;
const FAULT_AT: u64 = layout::FAULT_WORDS;

pub(super) const NOTIFICATION_BOUND: u64 = 0;
pub(crate) const NOTIFICATION_WORD: u64 = 8;
pub(super) const NOTIFICATION_QUEUE: u64 = 16;

fn ipc_offset(field: usize) -> u64 {
    field as u64
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    pub(super) fn field(&self, tcb: PhysAddr, offset: u64) -> u64 {
        self.memory.read(tcb.offset(offset))
    }

    pub(super) fn set_field(&mut self, tcb: PhysAddr, offset: u64, value: u64) {
        self.memory.write(tcb.offset(offset), value);
    }

    /// The first thread in the queue whose head and tail words are at `queue`.
    pub(super) fn queue_head(&self, queue: PhysAddr) -> Option<PhysAddr> {
        match self.memory.read(queue) {
            0 => None,
            head => Some(PhysAddr(head)),
        }
    }

    pub(super) fn queue_append(&mut self, queue: PhysAddr, tcb: PhysAddr) {
        let tail = self.memory.read(queue.offset(8));
        self.set_field(tcb, layout::QUEUE_NEXT, 0);
        self.set_field(tcb, layout::QUEUE_PREV, tail);
        if tail == 0 {
            self.memory.write(queue, tcb.get());
        } else {
            self.memory.write(PhysAddr(tail).offset(layout::QUEUE_NEXT), tcb.get());
        }
        self.memory.write(queue.offset(8), tcb.get());
    }

    pub(super) fn queue_remove(&mut self, queue: PhysAddr, tcb: PhysAddr) {
        let next = self.field(tcb, layout::QUEUE_NEXT);
        let prev = self.field(tcb, layout::QUEUE_PREV);
        if prev == 0 {
            self.memory.write(queue, next);
        } else {
            self.memory.write(PhysAddr(prev).offset(layout::QUEUE_NEXT), next);
        }
        if next == 0 {
            self.memory.write(queue.offset(8), prev);
        } else {
            self.memory.write(PhysAddr(next).offset(layout::QUEUE_PREV), prev);
        }
        self.set_field(tcb, layout::QUEUE_NEXT, 0);
        self.set_field(tcb, layout::QUEUE_PREV, 0);
    }

    /// Takes the thread out of the run queue and blocks it on `object`.
    pub(super) fn block(&mut self, tcb: PhysAddr, state: ThreadState, object: u64) {
        self.dequeue(tcb);
        self.set_thread_state(tcb, state);
        self.set_field(tcb, layout::BLOCKED_ON, object);
    }

    /// Makes a blocked thread runnable.
    pub(super) fn wake(&mut self, tcb: PhysAddr) {
        self.set_field(tcb, layout::BLOCKED_ON, 0);
        self.set_thread_state(tcb, ThreadState::Inactive);
        self.enqueue(tcb);
    }

    fn ipc_buffer_word(&self, tcb: PhysAddr, offset: u64) -> Option<u64> {
        self.ipc_buffer(tcb).map(|(frame, _)| self.memory.read(frame.offset(offset)))
    }

    fn set_ipc_buffer_word(&mut self, tcb: PhysAddr, offset: u64, value: u64) {
        if let Some((frame, _)) = self.ipc_buffer(tcb) {
            self.memory.write(frame.offset(offset), value);
        }
    }

    /// Puts a message into the receiver: `words` into its message registers
    /// and IPC buffer, `badge` into RDI, `info` into RSI.
    pub(crate) fn deliver(&mut self, receiver: PhysAddr, badge: u64, info: MessageInfo, words: &[u64]) {
        let mut context = self.context(receiver);
        let has_buffer = self.ipc_buffer(receiver).is_some();
        // Without an IPC buffer only the register words arrive.
        let length = if has_buffer { words.len() } else { words.len().min(REGISTER_WORDS) };
        context.set_message(words);
        let base = ipc_offset(core::mem::offset_of!(IpcBuffer, message));
        for (i, &word) in words.iter().enumerate().take(length).skip(REGISTER_WORDS) {
            self.set_ipc_buffer_word(receiver, base + 8 * i as u64, word);
        }
        context.rdi = badge;
        context.rsi = MessageInfo { length: length as u8, ..info }.encode().unwrap_or(0);
        self.set_context(receiver, &context);
    }

    /// Copies the sender's message to the receiver, with capability
    /// transfer through `endpoint` if `grant`.
    fn transfer(
        &mut self,
        sender: PhysAddr,
        receiver: PhysAddr,
        badge: u64,
        endpoint: Option<PhysAddr>,
        grant: bool,
    ) {
        let context = self.context(sender);
        let info = MessageInfo::decode(context.rsi);
        let words = self.message(sender, &context, info.length);
        let mut transferred = 0u8;
        let mut unwrapped = 0u8;
        let caps_at = ipc_offset(core::mem::offset_of!(IpcBuffer, caps_or_badges));
        let sender_root = self.cap(Self::tcb_slot(sender, 0));
        let mut slot_used = false;
        for index in 0..info.extra_caps {
            let Some(pointer) = self.ipc_buffer_word(sender, caps_at + 8 * u64::from(index)) else { break };
            let Ok((source, cap)) = self.lookup_cap(sender_root, pointer) else { break };
            match cap {
                Capability::Endpoint { object, badge, .. } if Some(object) == endpoint => {
                    self.set_ipc_buffer_word(receiver, caps_at + 8 * u64::from(index), badge);
                    unwrapped |= 1 << index;
                }
                _ if grant && !slot_used => {
                    let Some(destination) = self.receive_slot(receiver) else { break };
                    let Ok(derived) = super::cnode::derive(cap, Rights::all(), None) else { break };
                    self.insert_derived(source, destination, derived);
                    slot_used = true;
                }
                _ => break,
            }
            transferred = index + 1;
        }
        let reply_info =
            MessageInfo { label: info.label, caps_unwrapped: unwrapped, extra_caps: transferred, length: 0 };
        self.deliver(receiver, badge, reply_info, &words);
    }

    /// The empty slot the receiver named for a received capability.
    fn receive_slot(&self, receiver: PhysAddr) -> Option<super::Slot> {
        let word = |field: usize| self.ipc_buffer_word(receiver, ipc_offset(field));
        let cnode = word(core::mem::offset_of!(IpcBuffer, receive_cnode))?;
        let index = word(core::mem::offset_of!(IpcBuffer, receive_index))?;
        let depth = u8::try_from(word(core::mem::offset_of!(IpcBuffer, receive_depth))?).ok()?;
        let root = self.cap(Self::tcb_slot(receiver, 0));
        let (_, cnode_cap) = self.lookup_cap(root, cnode).ok()?;
        let slot = self.lookup_slot(cnode_cap, index, depth).ok()?;
        self.cap(slot).is_null().then_some(slot)
    }

    /// After a call is delivered: the receiver owes the caller a reply, or
    /// (without grant or grant-reply) the caller is left inactive.
    pub(super) fn link_reply(&mut self, caller: PhysAddr, receiver: PhysAddr, send_flags: u64) {
        if send_flags & (flags::GRANT | flags::GRANT_REPLY) == 0 && send_flags & flags::FAULT == 0 {
            self.dequeue(caller);
            self.set_thread_state(caller, ThreadState::Inactive);
            return;
        }
        self.dequeue(caller);
        self.set_thread_state(caller, ThreadState::BlockedOnReply);
        self.set_field(caller, layout::REPLIER, receiver.get());
        self.set_field(receiver, layout::REPLY_TO, caller.get());
    }

    /// `Send`/`Call` on an endpoint capability. Returns whether the sender
    /// blocked.
    pub fn send(&mut self, sender: PhysAddr, cap: Capability, blocking: bool, call: bool) -> bool {
        let Capability::Endpoint { object: endpoint, badge, rights } = cap else { return false };
        let mut send_flags = if call { flags::CALL } else { 0 };
        if rights.contains(Rights::GRANT) {
            send_flags |= flags::GRANT;
        }
        if rights.contains(Rights::GRANT_REPLY) {
            send_flags |= flags::GRANT_REPLY;
        }
        match self.queue_head(endpoint) {
            Some(receiver) if self.thread_state(receiver) == ThreadState::BlockedOnReceive => {
                self.queue_remove(endpoint, receiver);
                self.transfer(sender, receiver, badge, Some(endpoint), send_flags & flags::GRANT != 0);
                self.wake(receiver);
                if call {
                    self.link_reply(sender, receiver, send_flags);
                }
                call
            }
            _ if blocking || call => {
                self.block(sender, ThreadState::BlockedOnSend, endpoint.get());
                self.set_field(sender, layout::SEND_BADGE, badge);
                self.set_field(sender, layout::SEND_FLAGS, send_flags);
                self.queue_append(endpoint, sender);
                true
            }
            // A non-blocking send with no receiver is dropped.
            _ => false,
        }
    }

    /// `Recv` on an endpoint or notification capability. Returns whether
    /// the receiver blocked.
    pub fn receive(&mut self, receiver: PhysAddr, cap: Capability, blocking: bool) -> bool {
        match cap {
            Capability::Endpoint { object: endpoint, .. } => {
                // A pending signal on the bound notification comes first.
                if let Some(word) = self.take_bound_signal(receiver) {
                    self.deliver(receiver, word, MessageInfo::default(), &[]);
                    return false;
                }
                match self.queue_head(endpoint) {
                    Some(sender) if self.thread_state(sender) == ThreadState::BlockedOnSend => {
                        self.queue_remove(endpoint, sender);
                        let badge = self.field(sender, layout::SEND_BADGE);
                        let send_flags = self.field(sender, layout::SEND_FLAGS);
                        if send_flags & flags::FAULT != 0 {
                            let words = self.fault_words(sender);
                            let label = self.field(sender, layout::FAULT_LABEL);
                            self.deliver(receiver, badge, MessageInfo::new(label, 0, 0), &words);
                        } else {
                            self.transfer(
                                sender,
                                receiver,
                                badge,
                                Some(endpoint),
                                send_flags & flags::GRANT != 0,
                            );
                        }
                        self.set_field(sender, layout::BLOCKED_ON, 0);
                        if send_flags & (flags::CALL | flags::FAULT) != 0 {
                            self.set_thread_state(sender, ThreadState::Inactive);
                            self.link_reply(sender, receiver, send_flags);
                        } else {
                            self.wake(sender);
                        }
                        false
                    }
                    _ if blocking => {
                        self.block(receiver, ThreadState::BlockedOnReceive, endpoint.get());
                        self.queue_append(endpoint, receiver);
                        true
                    }
                    _ => {
                        self.deliver(receiver, 0, MessageInfo::default(), &[]);
                        false
                    }
                }
            }
            Capability::Notification { object, .. } => {
                let word = self.memory.read(object.offset(NOTIFICATION_WORD));
                if word != 0 {
                    self.memory.write(object.offset(NOTIFICATION_WORD), 0);
                    self.deliver(receiver, word, MessageInfo::default(), &[]);
                    false
                } else if blocking {
                    self.block(receiver, ThreadState::BlockedOnNotification, object.get());
                    self.queue_append(object.offset(NOTIFICATION_QUEUE), receiver);
                    true
                } else {
                    self.deliver(receiver, 0, MessageInfo::default(), &[]);
                    false
                }
            }
            _ => false,
        }
    }

    /// `Reply`: completes the call the thread owes a reply to, if any.
    pub fn reply(&mut self, replier: PhysAddr) {
        let caller = self.field(replier, layout::REPLY_TO);
        self.set_field(replier, layout::REPLY_TO, 0);
        if caller == 0 {
            return;
        }
        let caller = PhysAddr(caller);
        if self.thread_state(caller) != ThreadState::BlockedOnReply
            || self.field(caller, layout::REPLIER) != replier.get()
        {
            return;
        }
        self.set_field(caller, layout::REPLIER, 0);
        let was_fault = self.field(caller, layout::SEND_FLAGS) & flags::FAULT != 0;
        self.set_field(caller, layout::SEND_FLAGS, 0);
        if !was_fault {
            // A fault's reply only resumes the thread; its registers are the
            // handler's to change with `TcbWriteRegisters`.
            self.transfer(replier, caller, 0, None, false);
        }
        self.wake(caller);
    }

    /// `Signal` on a notification: wakes a waiter with `badge`, or wakes the
    /// bound thread blocked on an endpoint, or ORs `badge` into the word.
    pub fn signal(&mut self, notification: PhysAddr, badge: u64) {
        let queue = notification.offset(NOTIFICATION_QUEUE);
        if let Some(waiter) = self.queue_head(queue) {
            self.queue_remove(queue, waiter);
            self.deliver(waiter, badge, MessageInfo::default(), &[]);
            self.wake(waiter);
            return;
        }
        let bound = self.memory.read(notification.offset(NOTIFICATION_BOUND));
        if bound != 0 && self.thread_state(PhysAddr(bound)) == ThreadState::BlockedOnReceive {
            let bound = PhysAddr(bound);
            let endpoint = PhysAddr(self.field(bound, layout::BLOCKED_ON));
            self.queue_remove(endpoint, bound);
            self.deliver(bound, badge, MessageInfo::default(), &[]);
            self.wake(bound);
            return;
        }
        let word = self.memory.read(notification.offset(NOTIFICATION_WORD));
        self.memory.write(notification.offset(NOTIFICATION_WORD), word | badge);
    }

    /// The bound notification's word, if non-zero (it is then cleared): a
    /// receive takes it, and a VMM's `VmEnter` ends on it.
    pub fn take_bound_signal(&mut self, tcb: PhysAddr) -> Option<u64> {
        let notification = self.field(tcb, layout::BOUND_NOTIFICATION);
        if notification == 0 {
            return None;
        }
        let at = PhysAddr(notification).offset(NOTIFICATION_WORD);
        let word = self.memory.read(at);
        (word != 0).then(|| {
            self.memory.write(at, 0);
            word
        })
    }

    /// Binds `notification` to the thread (`TcbBindNotification`).
    pub fn bind_notification(&mut self, tcb: PhysAddr, notification: PhysAddr) {
        self.set_field(tcb, layout::BOUND_NOTIFICATION, notification.get());
        self.memory.write(notification.offset(NOTIFICATION_BOUND), tcb.get());
    }

    /// Undoes a binding, if there is one.
    pub fn unbind_notification(&mut self, tcb: PhysAddr) {
        let notification = self.field(tcb, layout::BOUND_NOTIFICATION);
        if notification != 0 {
            self.memory.write(PhysAddr(notification).offset(NOTIFICATION_BOUND), 0);
            self.set_field(tcb, layout::BOUND_NOTIFICATION, 0);
        }
    }

    /// The notification bound to a thread, and the thread bound to a notification.
    pub fn bound(&self, tcb: PhysAddr) -> Option<PhysAddr> {
        match self.field(tcb, layout::BOUND_NOTIFICATION) {
            0 => None,
            n => Some(PhysAddr(n)),
        }
    }

    /// Whether a notification is bound to a thread already.
    pub fn notification_bound(&self, notification: PhysAddr) -> bool {
        self.memory.read(notification.offset(NOTIFICATION_BOUND)) != 0
    }

    fn fault_words(&self, tcb: PhysAddr) -> [u64; FAULT_WORDS] {
        core::array::from_fn(|i| self.field(tcb, FAULT_AT + 8 * i as u64))
    }

    /// Sends a fault message for the thread to its fault endpoint, as a
    /// call: the thread waits until the handler replies. Returns `false`
    /// (and does nothing) if the thread has no usable fault endpoint.
    pub fn send_fault(&mut self, tcb: PhysAddr, label: u64, words: [u64; FAULT_WORDS]) -> bool {
        let pointer = self.field(tcb, layout::FAULT_ENDPOINT);
        if pointer == 0 {
            return false;
        }
        let root = self.cap(Self::tcb_slot(tcb, 0));
        let Ok((_, Capability::Endpoint { object: endpoint, badge, rights })) =
            self.lookup_cap(root, pointer)
        else {
            return false;
        };
        if !rights.contains(Rights::WRITE) {
            return false;
        }
        for (i, word) in words.iter().enumerate() {
            self.set_field(tcb, FAULT_AT + 8 * i as u64, *word);
        }
        self.set_field(tcb, layout::FAULT_LABEL, label);
        let send_flags = flags::CALL | flags::FAULT;
        match self.queue_head(endpoint) {
            Some(receiver) if self.thread_state(receiver) == ThreadState::BlockedOnReceive => {
                self.queue_remove(endpoint, receiver);
                self.deliver(receiver, badge, MessageInfo::new(label, 0, 0), &words);
                self.wake(receiver);
                self.set_field(tcb, layout::SEND_FLAGS, send_flags);
                self.link_reply(tcb, receiver, send_flags);
            }
            _ => {
                self.block(tcb, ThreadState::BlockedOnSend, endpoint.get());
                self.set_field(tcb, layout::SEND_BADGE, badge);
                self.set_field(tcb, layout::SEND_FLAGS, send_flags);
                self.queue_append(endpoint, tcb);
            }
        }
        true
    }

    /// Takes the thread out of whatever IPC it is in (it is being suspended
    /// or destroyed).
    pub(super) fn cancel_ipc(&mut self, tcb: PhysAddr) {
        let object = self.field(tcb, layout::BLOCKED_ON);
        match self.thread_state(tcb) {
            ThreadState::BlockedOnSend | ThreadState::BlockedOnReceive => {
                self.queue_remove(PhysAddr(object), tcb)
            }
            ThreadState::BlockedOnNotification => {
                self.queue_remove(PhysAddr(object).offset(NOTIFICATION_QUEUE), tcb);
            }
            ThreadState::BlockedOnReply => {
                let replier = self.field(tcb, layout::REPLIER);
                if replier != 0 && self.field(PhysAddr(replier), layout::REPLY_TO) == tcb.get() {
                    self.set_field(PhysAddr(replier), layout::REPLY_TO, 0);
                }
            }
            ThreadState::Inactive | ThreadState::Runnable => {}
        }
        // A caller waiting on this thread's reply keeps waiting, but must not
        // point at a thread that may be destroyed.
        let caller = self.field(tcb, layout::REPLY_TO);
        if caller != 0 && self.field(PhysAddr(caller), layout::REPLIER) == tcb.get() {
            self.set_field(PhysAddr(caller), layout::REPLIER, 0);
        }
        for field in [layout::BLOCKED_ON, layout::REPLY_TO, layout::REPLIER, layout::SEND_FLAGS] {
            self.set_field(tcb, field, 0);
        }
        if self.thread_state(tcb) != ThreadState::Runnable {
            self.set_thread_state(tcb, ThreadState::Inactive);
        }
    }

    /// The last capability to an endpoint or notification is going: every
    /// thread blocked on it restarts its system call, which then finds the
    /// capability gone.
    pub(super) fn finalise_ipc_object(&mut self, cap: &Capability) {
        let (queue, notification) = match *cap {
            Capability::Endpoint { object, .. } => (object, None),
            Capability::Notification { object, .. } => (object.offset(NOTIFICATION_QUEUE), Some(object)),
            _ => return,
        };
        while let Some(tcb) = self.queue_head(queue) {
            self.queue_remove(queue, tcb);
            let mut context = self.context(tcb);
            context.rip = context.rip.wrapping_sub(2);
            self.set_context(tcb, &context);
            self.wake(tcb);
        }
        if let Some(notification) = notification {
            let bound = self.memory.read(notification.offset(NOTIFICATION_BOUND));
            if bound != 0 {
                self.set_field(PhysAddr(bound), layout::BOUND_NOTIFICATION, 0);
            }
        }
    }

    /// The reply-to link of a thread (tests and benchmarks).
    pub fn reply_to(&self, tcb: PhysAddr) -> Option<PhysAddr> {
        match self.field(tcb, layout::REPLY_TO) {
            0 => None,
            t => Some(PhysAddr(t)),
        }
    }

    /// A fresh context for a fault handler reading a fault (tests).
    pub fn message_registers(&self, tcb: PhysAddr) -> [u64; 4] {
        let c: UserContext = self.context(tcb);
        [c.rdx, c.r8, c.r9, c.r10]
    }
}
