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
use strata_abi::message::{MAX_LENGTH, REGISTER_WORDS};
use strata_abi::object::Rights;
use strata_abi::syscall::Syscall;

use super::cap::raw;
use super::ipc::{NOTIFICATION_WORD, flags};
use super::tcb::register;
use super::tcb::{ThreadState, layout};
use super::{ObjectSpace, PhysicalMemory, Slot};
use crate::addr::PhysAddr;

const BUFFER_MESSAGE: u64 = core::mem::offset_of!(IpcBuffer, message) as u64;
/// The extra-capability count in a message info word.
const INFO_EXTRA_CAPS: u64 = 0x3 << 7;
/// The length in a message info word.
const INFO_LENGTH: u64 = 0x7f;
/// An endpoint's queue: head and tail words.
const QUEUE_HEAD: u64 = 0;
const QUEUE_TAIL: u64 = 8;

/// Object memory seen through one base pointer, which the compiler keeps
/// in a register for the whole fastpath (the general path's accessors go
/// through `PhysicalMemory`, whose base it must reload after every write).
#[derive(Clone, Copy)]
struct Words(*mut u8);

impl Words {
    #[inline(always)]
    fn get(self, object: PhysAddr, offset: u64) -> u64 {
        // SAFETY: `window` makes `base + physical address` the word of every
        // address the object layer uses; every address here is a live,
        // 8-byte aligned object word found through a capability or a link
        // the kernel keeps.
        unsafe { self.0.wrapping_add((object.get() + offset) as usize).cast::<u64>().read() }
    }

    #[inline(always)]
    fn set(self, object: PhysAddr, offset: u64, value: u64) {
        // SAFETY: as for `get`.
        unsafe { self.0.wrapping_add((object.get() + offset) as usize).cast::<u64>().write(value) }
    }

    #[inline(always)]
    fn slot(self, slot: Slot) -> [u64; 2] {
        [self.get(slot.0, 0), self.get(slot.0, 8)]
    }
}

/// How the run queues change when one thread blocks and another wakes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Handover {
    /// The woken thread takes the blocking one's place, alone at the top
    /// priority: two stores.
    Replace,
    /// The scheduler would still pick the woken thread, but the queues need
    /// the general dequeue and enqueue.
    Requeue,
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// Completes the system call the running thread `current` made (its
    /// registers are saved in its TCB) if it is a `Call` or `ReplyRecv` in
    /// the common case, and returns the thread to switch to. `None`: the
    /// general path must handle it, and nothing has been changed.
    pub fn fastpath(&mut self, current: PhysAddr) -> Option<PhysAddr> {
        let words = Words(self.memory.window());
        let number = words.get(current, register::RAX);
        if number == Syscall::Call as u64 {
            self.fast_call(words, current)
        } else if number == Syscall::ReplyRecv as u64 {
            self.fast_reply_recv(words, current)
        } else {
            None
        }
    }

    /// `Call` on an endpoint a server waits on.
    #[inline(always)]
    fn fast_call(&mut self, m: Words, caller: PhysAddr) -> Option<PhysAddr> {
        let info = m.get(caller, register::RSI);
        if info & INFO_EXTRA_CAPS != 0 {
            return None;
        }
        let (endpoint, badge, rights) = self.fast_endpoint(m, caller)?;
        if !rights.contains(Rights::WRITE) || !rights.intersects(Rights::GRANT | Rights::GRANT_REPLY) {
            return None;
        }
        let receiver = match m.get(endpoint, QUEUE_HEAD) {
            0 => return None,
            head => PhysAddr(head),
        };
        if m.get(receiver, layout::STATE) != ThreadState::BlockedOnReceive as u64 {
            return None;
        }
        let handover = self.fast_handover(m, caller, receiver)?;
        let length = self.fast_message_length(caller, receiver, info)?;

        // The receiver heads the endpoint's queue (its previous link is 0):
        // taking the head is cheaper than `queue_remove`'s general unlink.
        let next = m.get(receiver, layout::QUEUE_NEXT);
        m.set(endpoint, QUEUE_HEAD, next);
        if next == 0 {
            m.set(endpoint, QUEUE_TAIL, 0);
        } else {
            m.set(PhysAddr(next), layout::QUEUE_PREV, 0);
        }
        m.set(receiver, layout::QUEUE_NEXT, 0);
        m.set(receiver, layout::QUEUE_PREV, 0);
        self.move_message(m, caller, receiver, length);
        m.set(receiver, register::RDI, badge);
        m.set(receiver, register::RSI, info & !0xfff | length);
        if handover == Handover::Replace {
            self.replace(m, caller, receiver);
            m.set(caller, layout::STATE, ThreadState::BlockedOnReply as u64);
            m.set(caller, layout::REPLIER, receiver.get());
            m.set(receiver, layout::REPLY_TO, caller.get());
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
    #[inline(always)]
    fn fast_reply_recv(&mut self, m: Words, server: PhysAddr) -> Option<PhysAddr> {
        let caller = match m.get(server, layout::REPLY_TO) {
            0 => return None,
            caller => PhysAddr(caller),
        };
        if m.get(caller, layout::STATE) != ThreadState::BlockedOnReply as u64
            || m.get(caller, layout::REPLIER) != server.get()
            || m.get(caller, layout::SEND_FLAGS) & flags::FAULT != 0
        {
            return None;
        }
        let (endpoint, _, rights) = self.fast_endpoint(m, server)?;
        if !rights.contains(Rights::READ) {
            return None;
        }
        // Senders waiting (a queue holds senders or receivers, never both).
        let head = m.get(endpoint, QUEUE_HEAD);
        if head != 0 && m.get(PhysAddr(head), layout::STATE) == ThreadState::BlockedOnSend as u64 {
            return None;
        }
        let notification = m.get(server, layout::BOUND_NOTIFICATION);
        if notification != 0 && m.get(PhysAddr(notification), NOTIFICATION_WORD) != 0 {
            return None;
        }
        let handover = self.fast_handover(m, server, caller)?;
        // A reply transfers no capabilities: extra capabilities are ignored.
        let info = m.get(server, register::RSI);
        let length = self.fast_message_length(server, caller, info)?;

        m.set(server, layout::REPLY_TO, 0);
        m.set(caller, layout::REPLIER, 0);
        m.set(caller, layout::SEND_FLAGS, 0);
        self.move_message(m, server, caller, length);
        m.set(caller, register::RDI, 0);
        m.set(caller, register::RSI, info & !0xfff | length);
        if handover == Handover::Replace {
            self.replace(m, server, caller);
            m.set(server, layout::STATE, ThreadState::BlockedOnReceive as u64);
            m.set(server, layout::BLOCKED_ON, endpoint.get());
        } else {
            self.wake(caller);
            self.block(server, ThreadState::BlockedOnReceive, endpoint.get());
        }
        self.queue_append(endpoint, server);
        Some(caller)
    }

    /// Whether the scheduler would pick `to` once `from` (running) blocks
    /// and `to` wakes, and how the run queues then change; `None` if it
    /// would not pick `to`.
    #[inline(always)]
    fn fast_handover(&self, m: Words, from: PhysAddr, to: PhysAddr) -> Option<Handover> {
        let priority = m.get(from, layout::PRIORITY) as u8;
        let to_priority = m.get(to, layout::PRIORITY) as u8;
        if to_priority == priority && self.scheduler.alone_at_top(from, priority) {
            Some(Handover::Replace)
        } else if self.scheduler.would_choose(to_priority, from, priority) {
            Some(Handover::Requeue)
        } else {
            None
        }
    }

    /// [`Handover::Replace`]: `to` takes `from`'s place in the run queue.
    /// Both threads' queue links are clear: `from` was alone, and `to` left
    /// its endpoint queue (or was waiting for a reply, in none).
    #[inline(always)]
    fn replace(&mut self, m: Words, from: PhysAddr, to: PhysAddr) {
        self.scheduler.replace_alone(m.get(from, layout::PRIORITY) as u8, to);
        m.set(to, layout::BLOCKED_ON, 0);
        m.set(to, layout::STATE, ThreadState::Runnable as u64);
    }

    /// The endpoint capability the thread's RDI names: object, badge, rights.
    #[inline(always)]
    fn fast_endpoint(&self, m: Words, tcb: PhysAddr) -> Option<(PhysAddr, u64, Rights)> {
        let root = m.slot(Self::tcb_slot(tcb, 0));
        raw::endpoint(self.lookup_words(root, m.get(tcb, register::RDI))?.1)
    }

    /// The length of the message in `info` as the receiver gets it, or
    /// `None` for the general path: words past the registers come from
    /// the sender's IPC buffer, which must exist, and reach the receiver
    /// only if it has one.
    #[inline(always)]
    fn fast_message_length(&self, sender: PhysAddr, receiver: PhysAddr, info: u64) -> Option<u64> {
        let length = (info & INFO_LENGTH).min(MAX_LENGTH);
        if length <= REGISTER_WORDS as u64 {
            return Some(length);
        }
        self.ipc_buffer(sender)?;
        Some(if self.ipc_buffer(receiver).is_some() { length } else { REGISTER_WORDS as u64 })
    }

    /// Copies the first `length` message words from `sender` to `receiver`:
    /// registers to registers, and the rest IPC buffer to IPC buffer (both
    /// exist when `length` exceeds the registers).
    #[inline(always)]
    fn move_message(&self, m: Words, sender: PhysAddr, receiver: PhysAddr, length: u64) {
        for &register in register::MESSAGE.iter().take(length as usize) {
            m.set(receiver, register, m.get(sender, register));
        }
        if length > REGISTER_WORDS as u64 {
            let buffer = |tcb| self.ipc_buffer(tcb).map_or(PhysAddr(0), |(b, _)| b.offset(BUFFER_MESSAGE));
            let (from, to) = (buffer(sender), buffer(receiver));
            for offset in (8 * REGISTER_WORDS as u64..8 * length).step_by(8) {
                m.set(to, offset, m.get(from, offset));
            }
        }
    }
}
