//! IPC through the system-call layer: send and receive in both orders,
//! call and reply, non-blocking forms, capability transfer and badge
//! unwrapping, notifications (accumulate, wait, poll, bound), teardown of
//! blocked threads, and fault messages.

use strata_abi::invocation::Label;
use strata_abi::message::MessageInfo;
use strata_abi::object::{ObjectType, Rights};
use strata_abi::syscall::Syscall;

use super::memory::Arena;
use super::model::{check_invariants, cptr, finish, mint, received, retype, slot, syscall, world};
use super::tcb::ThreadState;
use super::*;
use crate::syscall::Outcome;

fn state(space: &ObjectSpace<Arena>, tcb: PhysAddr) -> ThreadState {
    space.thread_state(tcb)
}

#[test]
fn send_then_receive_and_receive_then_send() {
    let (mut space, t) = world(2);
    mint(&mut space, 32, 30, Rights::all(), 0x77);
    // Sender first: it blocks; the receiver takes the message and the badge.
    syscall(&mut space, t[0], Syscall::Send, cptr(32), MessageInfo::new(5, 0, 3), &[10, 20, 30]);
    assert_eq!(state(&space, t[0]), ThreadState::BlockedOnSend);
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    let (badge, info, words) = received(&space, t[1]);
    assert_eq!((badge, info.label, info.length), (0x77, 5, 3));
    assert_eq!(&words[..3], &[10, 20, 30]);
    assert_eq!((state(&space, t[0]), state(&space, t[1])), (ThreadState::Runnable, ThreadState::Runnable));
    // Receiver first: it blocks; the send completes at once.
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    assert_eq!(state(&space, t[1]), ThreadState::BlockedOnReceive);
    syscall(&mut space, t[0], Syscall::Send, cptr(30), MessageInfo::new(6, 0, 1), &[99]);
    assert_eq!(received(&space, t[1]).2[0], 99);
    assert_eq!(state(&space, t[1]), ThreadState::Runnable);
    check_invariants(&space);
}

#[test]
fn call_and_reply_round_trip() {
    let (mut space, t) = world(2);
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    syscall(&mut space, t[0], Syscall::Call, cptr(30), MessageInfo::new(1, 0, 2), &[3, 4]);
    assert_eq!(state(&space, t[0]), ThreadState::BlockedOnReply);
    assert_eq!(space.reply_to(t[1]), Some(t[0]));
    assert_eq!(received(&space, t[1]).2[..2], [3, 4]);
    syscall(&mut space, t[1], Syscall::Reply, 0, MessageInfo::new(0, 0, 1), &[7]);
    assert_eq!(state(&space, t[0]), ThreadState::Runnable);
    assert_eq!(received(&space, t[0]).2[0], 7);
    assert_eq!(space.reply_to(t[1]), None);
    // ReplyRecv: reply to a queued caller, then wait again.
    syscall(&mut space, t[0], Syscall::Call, cptr(30), MessageInfo::new(2, 0, 0), &[]);
    assert_eq!(state(&space, t[0]), ThreadState::BlockedOnSend);
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    assert_eq!(state(&space, t[0]), ThreadState::BlockedOnReply);
    syscall(&mut space, t[1], Syscall::ReplyRecv, cptr(30), MessageInfo::new(0, 0, 1), &[8]);
    assert_eq!(received(&space, t[0]).2[0], 8);
    assert_eq!(state(&space, t[1]), ThreadState::BlockedOnReceive);
    // A call through a capability without grant rights cannot be replied to.
    mint(&mut space, 33, 30, Rights::WRITE, 0);
    syscall(&mut space, t[0], Syscall::Call, cptr(33), MessageInfo::default(), &[]);
    assert_eq!(state(&space, t[0]), ThreadState::Inactive);
    check_invariants(&space);
}

#[test]
fn non_blocking_forms_never_block() {
    let (mut space, t) = world(2);
    syscall(&mut space, t[0], Syscall::NbSend, cptr(30), MessageInfo::new(1, 0, 0), &[]);
    assert_eq!(state(&space, t[0]), ThreadState::Runnable, "dropped, not queued");
    syscall(&mut space, t[1], Syscall::NbRecv, cptr(30), MessageInfo::default(), &[]);
    assert_eq!((state(&space, t[1]), received(&space, t[1]).0), (ThreadState::Runnable, 0));
    // Without the right: a fault (no handler here).
    mint(&mut space, 34, 30, Rights::READ, 0);
    assert_eq!(
        syscall(&mut space, t[0], Syscall::Send, cptr(34), MessageInfo::default(), &[]),
        Outcome::Fault
    );
}

#[test]
fn capabilities_travel_with_grant_and_same_endpoint_caps_unwrap() {
    let (mut space, t) = world(2);
    mint(&mut space, 35, 30, Rights::all(), 0x99);
    // The receive CNode is named by a full 64-bit lookup, which must stop
    // at a CNode capability: a copy of the root with a 52-bit guard (6 + 52
    // + 6 bits resolve exactly to its slot 0, the root itself).
    mint(&mut space, 39, 0, Rights::all(), 52);
    // The receiver names slot 60 of that CNode for what it receives.
    let (buffer, _) = space.ipc_buffer(t[1]).expect("buffer");
    for (offset, value) in [(125, cptr(39)), (126, 60), (127, 6)] {
        space.memory.write(buffer.offset(8 * offset), value);
    }
    let (sender_buffer, _) = space.ipc_buffer(t[0]).expect("buffer");
    space.memory.write(sender_buffer.offset(8 * 122), cptr(31)); // the notification: transferred
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    syscall(&mut space, t[0], Syscall::Send, cptr(30), MessageInfo::new(0, 1, 0), &[]);
    let (_, info, _) = received(&space, t[1]);
    assert_eq!(info.extra_caps, 1);
    assert!(matches!(space.cap(slot(60)), Capability::Notification { .. }), "granted capability arrives");
    // A badged capability to the same endpoint arrives as its badge.
    space.memory.write(sender_buffer.offset(8 * 122), cptr(35));
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    syscall(&mut space, t[0], Syscall::Send, cptr(30), MessageInfo::new(0, 1, 0), &[]);
    let (_, info, _) = received(&space, t[1]);
    assert_eq!((info.extra_caps, info.caps_unwrapped), (1, 1));
    assert_eq!(space.memory.read(buffer.offset(8 * 122)), 0x99);
    // Without the grant right nothing is transferred.
    mint(&mut space, 36, 30, Rights::READ | Rights::WRITE, 0);
    space.memory.write(buffer.offset(8 * 126), 61);
    space.memory.write(sender_buffer.offset(8 * 122), cptr(31));
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    syscall(&mut space, t[0], Syscall::Send, cptr(36), MessageInfo::new(0, 1, 0), &[]);
    assert_eq!(received(&space, t[1]).1.extra_caps, 0);
    assert!(space.cap(slot(61)).is_null());
    check_invariants(&space);
}

#[test]
fn notifications_accumulate_wake_and_poll() {
    let (mut space, t) = world(2);
    mint(&mut space, 37, 31, Rights::all(), 0b0101);
    mint(&mut space, 38, 31, Rights::all(), 0b1000);
    syscall(&mut space, t[0], Syscall::Send, cptr(37), MessageInfo::default(), &[]);
    syscall(&mut space, t[0], Syscall::Send, cptr(38), MessageInfo::default(), &[]);
    syscall(&mut space, t[1], Syscall::Recv, cptr(31), MessageInfo::default(), &[]);
    assert_eq!(received(&space, t[1]).0, 0b1101, "signals OR together");
    syscall(&mut space, t[1], Syscall::NbRecv, cptr(31), MessageInfo::default(), &[]);
    assert_eq!(received(&space, t[1]).0, 0, "poll: nothing pending");
    syscall(&mut space, t[1], Syscall::Recv, cptr(31), MessageInfo::default(), &[]);
    assert_eq!(state(&space, t[1]), ThreadState::BlockedOnNotification);
    syscall(&mut space, t[0], Syscall::Send, cptr(37), MessageInfo::default(), &[]);
    assert_eq!((state(&space, t[1]), received(&space, t[1]).0), (ThreadState::Runnable, 0b0101));
    // Bound: a signal wakes the thread waiting on an endpoint.
    let bind =
        space.decode_tcb(space.cap(slot(41)), Label::TcbBindNotification, &[], &[slot(31)]).expect("bind");
    space.perform_tcb(bind);
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    assert_eq!(state(&space, t[1]), ThreadState::BlockedOnReceive);
    syscall(&mut space, t[0], Syscall::Send, cptr(38), MessageInfo::default(), &[]);
    assert_eq!((state(&space, t[1]), received(&space, t[1]).0), (ThreadState::Runnable, 0b1000));
    // A pending bound signal is taken before any message.
    syscall(&mut space, t[0], Syscall::Send, cptr(37), MessageInfo::default(), &[]);
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    assert_eq!((state(&space, t[1]), received(&space, t[1]).0), (ThreadState::Runnable, 0b0101));
    assert_eq!(
        space.decode_tcb(space.cap(slot(40)), Label::TcbBindNotification, &[], &[slot(31)]),
        Err(strata_abi::error::InvocationError::IllegalOperation),
        "a notification binds to one thread"
    );
}

#[test]
fn deleting_objects_and_threads_leaves_no_dangling_queue() {
    let (mut space, t) = world(3);
    syscall(&mut space, t[0], Syscall::Send, cptr(30), MessageInfo::default(), &[]);
    syscall(&mut space, t[1], Syscall::Send, cptr(30), MessageInfo::default(), &[]);
    // Deleting a queued sender takes it out of the queue.
    finish(&mut space, 1, |s, b| s.delete(slot(40), b));
    syscall(&mut space, t[2], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    assert_eq!(state(&space, t[1]), ThreadState::Runnable, "the remaining sender was next");
    // Deleting the endpoint restarts its waiters at their system call.
    syscall(&mut space, t[2], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    let rip = space.context(t[2]).rip;
    finish(&mut space, 1, |s, b| s.delete(slot(30), b));
    assert_eq!(state(&space, t[2]), ThreadState::Runnable);
    assert_eq!(space.context(t[2]).rip, rip - 2);
    // The caller of a destroyed server stays blocked, pointing at nothing.
    retype(&mut space, ObjectType::Endpoint, 0, 30, 1);
    syscall(&mut space, t[2], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    syscall(&mut space, t[1], Syscall::Call, cptr(30), MessageInfo::default(), &[]);
    assert_eq!(state(&space, t[1]), ThreadState::BlockedOnReply);
    finish(&mut space, 1, |s, b| s.delete(slot(42), b));
    assert_eq!(state(&space, t[1]), ThreadState::BlockedOnReply);
    check_invariants(&space);
}

#[test]
fn faults_go_to_the_handler_and_its_reply_resumes_the_thread() {
    let (mut space, t) = world(2);
    // Thread 0's fault endpoint is the endpoint in slot 30.
    space.memory.write(t[0].offset(super::tcb::layout::FAULT_ENDPOINT), cptr(30));
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    let before = space.context(t[0]);
    assert!(space.send_fault(t[0], super::ipc::FAULT_EXCEPTION, [6, 0, 0x40_1234, 0, 0x7000]));
    assert_eq!(state(&space, t[0]), ThreadState::BlockedOnReply);
    let (_, info, words) = received(&space, t[1]);
    assert_eq!((info.label, info.length), (super::ipc::FAULT_EXCEPTION, 5));
    assert_eq!(&words[..3], &[6, 0, 0x40_1234]);
    syscall(&mut space, t[1], Syscall::Reply, 0, MessageInfo::default(), &[]);
    assert_eq!(state(&space, t[0]), ThreadState::Runnable);
    assert_eq!(
        space.context(t[0]).rip,
        before.rip,
        "the reply does not change the faulted thread's registers"
    );
    // An unknown system call is a fault too, queued if the handler is busy.
    assert_eq!(
        syscall(&mut space, t[0], Syscall::DebugPutChar, 0, MessageInfo::default(), &[]),
        Outcome::PutChar(0)
    );
    let mut bogus = space.context(t[0]);
    bogus.rax = 555;
    space.set_context(t[0], &bogus);
    assert_eq!(space.handle_syscall(t[0]), Outcome::Continue);
    assert_eq!(state(&space, t[0]), ThreadState::BlockedOnSend);
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    assert_eq!(received(&space, t[1]).1.label, super::ipc::FAULT_SYSCALL);
    assert_eq!(received(&space, t[1]).2[0], 555);
    assert_eq!(state(&space, t[0]), ThreadState::BlockedOnReply);
}
