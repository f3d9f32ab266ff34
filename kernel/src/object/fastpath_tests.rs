//! The fastpath against the general path: wherever the fastpath completes
//! a call, it must leave exactly the memory and run queues the general path
//! leaves and switch to the thread the scheduler would pick; wherever it
//! declines, it must change nothing.

use proptest::prelude::*;
use strata_abi::bootinfo::IpcBuffer;
use strata_abi::message::MessageInfo;
use strata_abi::object::Rights;
use strata_abi::syscall::Syscall;

use super::memory::Arena;
use super::model::{check_invariants, slot};
use super::model::{cptr, mint, received, syscall, world};
use super::tcb::{ThreadState, UserContext, layout};
use super::*;

/// Sets up a thread's registers (and IPC buffer words past the registers)
/// for a system call, as the entry stub would have saved them.
fn prepare(space: &mut ObjectSpace<Arena>, tcb: PhysAddr, number: Syscall, target: u64, info: MessageInfo) {
    let mut context: UserContext = space.context(tcb);
    context.rax = number as u64;
    context.rdi = target;
    context.rsi = info.encode().expect("fits");
    let base = 1000 * (tcb.get() >> 12);
    context.set_message(&core::array::from_fn::<u64, 8, _>(|i| base + i as u64));
    context.rip = 0x40_1002;
    space.set_context(tcb, &context);
    if let Some((frame, _)) = space.ipc_buffer(tcb) {
        let message = core::mem::offset_of!(IpcBuffer, message) as u64;
        for i in 8..120 {
            space.memory.write(frame.offset(message + 8 * i), base + i);
        }
    }
}

/// Runs the system call `tcb` prepared both ways and checks they agree.
/// Returns whether the fastpath took it.
fn both_ways(space: &mut ObjectSpace<Arena>, tcb: PhysAddr) -> bool {
    let before = space.clone();
    let mut fast = space.clone();
    let switched = fast.fastpath(tcb);
    space.handle_syscall(tcb);
    match switched {
        Some(next) => {
            assert_eq!(space.choose_thread(), Some(next), "the fastpath switched to another thread");
            assert!(fast.memory == space.memory, "the fastpath wrote different memory");
            assert_eq!(fast.scheduler, space.scheduler, "the fastpath left different run queues");
            true
        }
        None => {
            assert!(fast.memory == before.memory, "a declined fastpath changed memory");
            assert_eq!(fast.scheduler, before.scheduler, "a declined fastpath changed the run queues");
            false
        }
    }
}

fn set_priority(space: &mut ObjectSpace<Arena>, tcb: PhysAddr, priority: u8) {
    let runnable = space.thread_state(tcb) == ThreadState::Runnable;
    space.dequeue(tcb);
    space.memory.write(tcb.offset(layout::PRIORITY), u64::from(priority) | 255 << 8);
    if runnable {
        space.enqueue(tcb);
    }
}

#[test]
fn call_and_reply_recv_take_the_fastpath_in_the_common_case() {
    let (mut space, t) = world(2);
    mint(&mut space, 32, 30, Rights::all(), 0x55);
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    prepare(&mut space, t[0], Syscall::Call, cptr(32), MessageInfo::new(9, 0, 3));
    assert_eq!(space.fastpath(t[0]), Some(t[1]));
    let (badge, info, words) = received(&space, t[1]);
    let base = 1000 * (t[0].get() >> 12);
    assert_eq!((badge, info.label, info.length), (0x55, 9, 3));
    assert_eq!(words[..3], [base, base + 1, base + 2]);
    assert_eq!(space.thread_state(t[0]), ThreadState::BlockedOnReply);
    assert_eq!(space.reply_to(t[1]), Some(t[0]));
    // The reply comes back the same way, and the server waits again.
    prepare(&mut space, t[1], Syscall::ReplyRecv, cptr(30), MessageInfo::new(4, 0, 1));
    assert_eq!(space.fastpath(t[1]), Some(t[0]));
    let (badge, info, words) = received(&space, t[0]);
    assert_eq!((badge, info.label, info.length, words[0]), (0, 4, 1, 1000 * (t[1].get() >> 12)));
    assert_eq!(space.thread_state(t[0]), ThreadState::Runnable);
    assert_eq!(space.thread_state(t[1]), ThreadState::BlockedOnReceive);
    assert_eq!(space.reply_to(t[1]), None);
    check_invariants(&space);
}

#[test]
fn the_fastpath_declines_what_it_cannot_finish() {
    let (mut space, t) = world(3);
    syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
    // Extra capabilities go through the general path.
    prepare(&mut space, t[0], Syscall::Call, cptr(30), MessageInfo::new(1, 1, 0));
    assert!(!both_ways(&mut space.clone(), t[0]));
    // So does a call that cannot be replied to.
    mint(&mut space, 33, 30, Rights::READ | Rights::WRITE, 0);
    prepare(&mut space, t[0], Syscall::Call, cptr(33), MessageInfo::new(1, 0, 0));
    assert!(!both_ways(&mut space.clone(), t[0]));
    // And one whose receiver the scheduler would not run next.
    set_priority(&mut space, t[2], 150);
    prepare(&mut space, t[0], Syscall::Call, cptr(30), MessageInfo::new(1, 0, 0));
    assert!(!both_ways(&mut space.clone(), t[0]));
    // At the caller's priority the bystander would still go first (round robin)...
    set_priority(&mut space, t[2], 100);
    assert!(!both_ways(&mut space.clone(), t[0]));
    // ...below it, the receiver runs next.
    set_priority(&mut space, t[2], 50);
    assert!(both_ways(&mut space, t[0]));
    // A reply whose server has a signal pending on its bound notification.
    space.bind_notification(
        t[1],
        match space.cap(slot(31)) {
            Capability::Notification { object, .. } => object,
            other => panic!("slot 31 holds {other:?}"),
        },
    );
    mint(&mut space, 34, 31, Rights::all(), 1);
    syscall(&mut space, t[2], Syscall::Send, cptr(34), MessageInfo::default(), &[]);
    prepare(&mut space, t[1], Syscall::ReplyRecv, cptr(30), MessageInfo::new(0, 0, 0));
    assert!(!both_ways(&mut space, t[1]));
    check_invariants(&space);
}

proptest! {
    #![proptest_config(super::tests::sequence_config())]

    /// Random priorities, rights, badges, labels, lengths and buffers: a
    /// call and its reply, each run both ways.
    #[test]
    fn fastpath_and_general_path_agree(
        priorities in prop::array::uniform3(98u8..=102),
        bystander_runs in any::<bool>(),
        rights in prop_oneof![Just(Rights::all().bits()), 0u64..16],
        badge in 0u64..1 << 40,
        call in (0u64..1 << 20, prop_oneof![3 => Just(0u8), 1 => 0u8..=3], 0u8..=120),
        reply in (0u64..1 << 20, 0u8..=3, 0u8..=120),
        buffers in prop::array::uniform2(any::<bool>()),
        server_waits in any::<bool>(),
    ) {
        let (mut space, t) = world(3);
        for (&tcb, &priority) in t.iter().zip(&priorities) {
            set_priority(&mut space, tcb, priority);
        }
        if !bystander_runs {
            space.suspend(t[2]);
        }
        for (&tcb, &keep) in t.iter().zip(&buffers) {
            if !keep {
                // The TCB's frame capability goes: the thread has no buffer.
                let buffer = ObjectSpace::<Arena>::tcb_slot(tcb, super::tcb::BUFFER_SLOT);
                super::model::finish(&mut space, 8, |s, b| s.delete(buffer, b));
            }
        }
        mint(&mut space, 32, 30, Rights::from_bits_truncate(rights), badge);
        if server_waits {
            syscall(&mut space, t[1], Syscall::Recv, cptr(30), MessageInfo::default(), &[]);
        }
        prepare(&mut space, t[0], Syscall::Call, cptr(32), MessageInfo::new(call.0, call.1, call.2));
        both_ways(&mut space, t[0]);
        if space.thread_state(t[1]) == ThreadState::Runnable {
            prepare(&mut space, t[1], Syscall::ReplyRecv, cptr(30), MessageInfo::new(reply.0, reply.1, reply.2));
            both_ways(&mut space, t[1]);
        }
        check_invariants(&space);
    }
}
