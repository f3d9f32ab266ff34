//! IPC through the system-call layer: send and receive in both orders,
//! call and reply, non-blocking forms, capability transfer and badge
//! unwrapping, notifications (accumulate, wait, poll, bound), teardown of
//! blocked threads, and fault messages.

use strata_abi::invocation::Label;
use strata_abi::message::MessageInfo;
use strata_abi::object::{ObjectType, Rights};
use strata_abi::syscall::Syscall;

use super::memory::Arena;
use super::tcb::{ThreadState, UserContext};
use super::tests::{check_invariants, finish, root_cap};
use super::vspace_tests::{POOL, boot_with_pool, invoke, retype, slot};
use super::*;
use crate::syscall::Outcome;

/// Slots: CNode 17 (the threads' CSpace, radix 6), PML4 18, tables 20-22,
/// endpoint 30, notification 31; threads from 40 with IPC buffer frames
/// from 50 mapped at 0x10000 + 0x1000 * n.
pub(super) fn world(threads: u64) -> (ObjectSpace<Arena>, Vec<PhysAddr>) {
    let mut space = boot_with_pool();
    retype(&mut space, ObjectType::Pml4, 0, 18, 1);
    retype(&mut space, ObjectType::Pdpt, 0, 20, 1);
    retype(&mut space, ObjectType::PageDirectory, 0, 21, 1);
    retype(&mut space, ObjectType::PageTable, 0, 22, 1);
    retype(&mut space, ObjectType::Endpoint, 0, 30, 1);
    retype(&mut space, ObjectType::Notification, 0, 31, 1);
    invoke(&mut space, POOL, Label::AsidPoolAssign, &[], &[18]).expect("assign");
    for table in [20, 21, 22] {
        invoke(&mut space, table, Label::PageTableMap, &[0x10000], &[18]).expect("map table");
    }
    let rw = (Rights::READ | Rights::WRITE).bits();
    let mut tcbs = Vec::new();
    for n in 0..threads {
        retype(&mut space, ObjectType::Tcb, 0, 40 + n, 1);
        retype(&mut space, ObjectType::Frame4K, 0, 50 + n, 1);
        let address = 0x10000 + 0x1000 * n;
        invoke(&mut space, 50 + n, Label::FrameMap, &[address, rw, 0], &[18]).expect("map buffer");
        // The threads share the root CNode as their CSpace: slot numbers
        // below are capability pointers for them too (guard-free radix 6, depth 64 -> use the low bits).
        let tcb_cap = space.cap(slot(40 + n));
        let configure = space
            .decode_tcb(tcb_cap, Label::TcbConfigure, &[address, 0], &[slot(0), slot(18), slot(50 + n)])
            .expect("configure");
        space.perform_tcb(configure);
        let Capability::Tcb { object } = tcb_cap else { unreachable!() };
        space.memory.write(object.offset(super::tcb::layout::PRIORITY), 100 | 255 << 8);
        let resume = space.decode_tcb(tcb_cap, Label::TcbResume, &[], &[]).expect("resume");
        space.perform_tcb(resume);
        tcbs.push(object);
    }
    (space, tcbs)
}

/// The root CNode (radix 6, no guard) resolves pointers with their low 6
/// bits first at depth 64 only if shifted: a pointer to slot `n` is `n << 58`.
pub(super) fn cptr(n: u64) -> u64 {
    n << 58
}

pub(super) fn syscall(
    space: &mut ObjectSpace<Arena>,
    tcb: PhysAddr,
    number: Syscall,
    target: u64,
    info: MessageInfo,
    words: &[u64],
) -> Outcome {
    let mut context = space.context(tcb);
    context.rax = number as u64;
    context.rdi = target;
    context.rsi = info.encode().expect("fits");
    let w = |n: usize| words.get(n).copied().unwrap_or(0);
    (context.rdx, context.r8, context.r9, context.r10) = (w(0), w(1), w(2), w(3));
    context.rip = 0x40_1002;
    space.set_context(tcb, &context);
    space.handle_syscall(tcb)
}

pub(super) fn received(space: &ObjectSpace<Arena>, tcb: PhysAddr) -> (u64, MessageInfo, [u64; 4]) {
    let c: UserContext = space.context(tcb);
    (c.rdi, MessageInfo::decode(c.rsi), [c.rdx, c.r8, c.r9, c.r10])
}

fn state(space: &ObjectSpace<Arena>, tcb: PhysAddr) -> ThreadState {
    space.thread_state(tcb)
}

pub(super) fn mint(space: &mut ObjectSpace<Arena>, dest: u64, source: u64, rights: Rights, badge: u64) {
    let invocation = space
        .decode_cnode(
            root_cap(),
            Label::CNodeMint,
            &[dest, 6, source, 6, rights.bits(), badge],
            Some(root_cap()),
        )
        .expect("mint");
    let _ = space.perform_cnode(invocation, &mut super::delete::Budget(1));
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
