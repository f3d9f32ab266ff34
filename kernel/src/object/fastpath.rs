//! The IPC fastpath: `Call` and `ReplyRecv` in their common case, done in
//! one straight pass over the objects involved (after seL4's fastpath).
//!
//! The common case is a client calling a server that waits in `Recv`, and
//! the server replying and waiting again with `ReplyRecv`. When the
//! conditions below hold, the outcome of the general path is known in
//! advance: the message moves from one thread to the other, the sender
//! blocks, and the scheduler would pick the receiver. The fastpath then
//! does exactly the general path's writes, and nothing else: it reads only
//! the registers it needs from the caller's saved context and writes only
//! the receiver's message registers, with no intermediate copies of
//! contexts or messages.
//!
//! Anything else (extra capabilities on a call, a receiver that is not
//! waiting, a call without grant or grant-reply, a fault reply, a pending
//! signal on a bound notification, a receiver the scheduler would not pick
//! next) leaves everything untouched and takes the general path. The host
//! tests check that the two paths leave identical memory and run queues.

use strata_abi::bootinfo::IpcBuffer;
use strata_abi::message::{MessageInfo, REGISTER_WORDS};
use strata_abi::object::Rights;
use strata_abi::syscall::Syscall;

use super::ipc::flags;
use super::tcb::register;
use super::tcb::{ThreadState, layout};
use super::{ObjectSpace, PhysicalMemory};
use crate::addr::PhysAddr;

const BUFFER_MESSAGE: u64 = core::mem::offset_of!(IpcBuffer, message) as u64;

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// Completes the system call the running thread `current` made (its
    /// registers are saved in its TCB) if it is a `Call` or `ReplyRecv` in
    /// the common case, and returns the thread to switch to. `None`: the
    /// general path must handle it, and nothing has been changed.
    pub fn fastpath(&mut self, current: PhysAddr) -> Option<PhysAddr> {
        let number = self.field(current, register::RAX);
        if number == Syscall::Call as u64 {
            self.fast_call(current)
        } else if number == Syscall::ReplyRecv as u64 {
            self.fast_reply_recv(current)
        } else {
            None
        }
    }

    /// `Call` on an endpoint a server waits on.
    fn fast_call(&mut self, caller: PhysAddr) -> Option<PhysAddr> {
        let info = MessageInfo::decode(self.field(caller, register::RSI));
        if info.extra_caps != 0 {
            return None;
        }
        let (endpoint, badge, rights) = self.fast_endpoint(caller)?;
        if !rights.contains(Rights::WRITE) || !rights.intersects(Rights::GRANT | Rights::GRANT_REPLY) {
            return None;
        }
        let receiver = self.queue_head(endpoint)?;
        if self.thread_state(receiver) != ThreadState::BlockedOnReceive
            || !self.would_run_next(receiver, caller)
        {
            return None;
        }
        let length = self.fast_message_length(caller, receiver, info.length)?;

        self.queue_remove(endpoint, receiver);
        self.move_message(caller, receiver, length);
        self.set_field(receiver, register::RDI, badge);
        self.set_field(
            receiver,
            register::RSI,
            MessageInfo { label: info.label, length, ..Default::default() }.encode().unwrap_or(0),
        );
        if self.hand_over(caller, receiver) {
            self.set_thread_state(caller, ThreadState::BlockedOnReply);
            self.set_field(caller, layout::REPLIER, receiver.get());
            self.set_field(receiver, layout::REPLY_TO, caller.get());
        } else {
            self.wake(receiver);
            // The call has grant or grant-reply (checked above), so
            // `link_reply` makes the reply link; its flags need only say so.
            self.link_reply(caller, receiver, flags::CALL | flags::GRANT_REPLY);
        }
        Some(receiver)
    }

    /// `ReplyRecv` by a server whose caller waits for the reply, on an
    /// endpoint with no sender waiting.
    fn fast_reply_recv(&mut self, server: PhysAddr) -> Option<PhysAddr> {
        let caller = match self.field(server, layout::REPLY_TO) {
            0 => return None,
            caller => PhysAddr(caller),
        };
        if self.thread_state(caller) != ThreadState::BlockedOnReply
            || self.field(caller, layout::REPLIER) != server.get()
            || self.field(caller, layout::SEND_FLAGS) & flags::FAULT != 0
            || !self.would_run_next(caller, server)
        {
            return None;
        }
        let (endpoint, _, rights) = self.fast_endpoint(server)?;
        if !rights.contains(Rights::READ) {
            return None;
        }
        if let Some(head) = self.queue_head(endpoint)
            && self.thread_state(head) == ThreadState::BlockedOnSend
        {
            return None;
        }
        if let Some(notification) = self.bound(server)
            && self.memory.read(notification.offset(super::ipc::NOTIFICATION_WORD)) != 0
        {
            return None;
        }
        // A reply transfers no capabilities: extra capabilities are ignored.
        let info = MessageInfo::decode(self.field(server, register::RSI));
        let length = self.fast_message_length(server, caller, info.length)?;

        self.set_field(server, layout::REPLY_TO, 0);
        self.set_field(caller, layout::REPLIER, 0);
        self.set_field(caller, layout::SEND_FLAGS, 0);
        self.move_message(server, caller, length);
        self.set_field(caller, register::RDI, 0);
        self.set_field(
            caller,
            register::RSI,
            MessageInfo { label: info.label, length, ..Default::default() }.encode().unwrap_or(0),
        );
        if self.hand_over(server, caller) {
            self.set_thread_state(server, ThreadState::BlockedOnReceive);
            self.set_field(server, layout::BLOCKED_ON, endpoint.get());
        } else {
            self.wake(caller);
            self.block(server, ThreadState::BlockedOnReceive, endpoint.get());
        }
        self.queue_append(endpoint, server);
        Some(caller)
    }

    /// The common case of the run-queue update: `from` (running, so
    /// queued) blocks and `to` (blocked, so in no run queue) becomes
    /// runnable at the same priority, where `from` was alone. `to` then
    /// simply takes `from`'s place, which is what dequeuing one and
    /// enqueuing the other leaves. Returns whether that applied (`to` is
    /// then runnable, `from` out of its queue with its state still to set).
    #[inline(always)]
    fn hand_over(&mut self, from: PhysAddr, to: PhysAddr) -> bool {
        let (priority, _) = self.priority(from);
        if self.priority(to).0 != priority || !self.scheduler.replace_alone(from, to, priority) {
            return false;
        }
        // Both threads' queue links are clear: `from` was alone, and `to`
        // left its endpoint queue (or was waiting for a reply, in none).
        self.set_field(to, layout::BLOCKED_ON, 0);
        self.set_thread_state(to, ThreadState::Runnable);
        true
    }

    /// The endpoint capability the thread's RDI names: object, badge, rights.
    #[inline(always)]
    fn fast_endpoint(&self, tcb: PhysAddr) -> Option<(PhysAddr, u64, Rights)> {
        let root = self.slot_words(Self::tcb_slot(tcb, 0));
        let (_, words) = self.lookup_words(root, self.field(tcb, register::RDI))?;
        super::cap::raw::endpoint(words)
    }

    /// Whether the scheduler would pick `next` once `current` blocks and
    /// `next` is made runnable: `next` outranks every other runnable thread.
    #[inline(always)]
    fn would_run_next(&self, next: PhysAddr, current: PhysAddr) -> bool {
        let (next_priority, _) = self.priority(next);
        let (current_priority, _) = self.priority(current);
        self.scheduler.would_choose(next_priority, current, current_priority)
    }

    /// The length of a `length`-word message as the receiver gets it, or
    /// `None` for the general path: words past the registers come from
    /// the sender's IPC buffer, which must exist, and reach the receiver
    /// only if it has one.
    fn fast_message_length(&self, sender: PhysAddr, receiver: PhysAddr, length: u8) -> Option<u8> {
        if usize::from(length) <= REGISTER_WORDS {
            return Some(length);
        }
        self.ipc_buffer(sender)?;
        Some(if self.ipc_buffer(receiver).is_some() { length } else { REGISTER_WORDS as u8 })
    }

    /// Copies the first `length` message words from `sender` to `receiver`:
    /// registers to registers, and the rest IPC buffer to IPC buffer (both
    /// exist when `length` exceeds the registers).
    fn move_message(&mut self, sender: PhysAddr, receiver: PhysAddr, length: u8) {
        let length = usize::from(length);
        for &register in &register::MESSAGE[..length.min(REGISTER_WORDS)] {
            let word = self.field(sender, register);
            self.set_field(receiver, register, word);
        }
        if length > REGISTER_WORDS {
            let buffer = |tcb| self.ipc_buffer(tcb).map_or(PhysAddr(0), |(buffer, _)| buffer);
            let (from, to) = (buffer(sender).offset(BUFFER_MESSAGE), buffer(receiver).offset(BUFFER_MESSAGE));
            for i in REGISTER_WORDS as u64..length as u64 {
                let word = self.memory.read(from.offset(8 * i));
                self.memory.write(to.offset(8 * i), word);
            }
        }
    }
}
