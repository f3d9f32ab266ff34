//! Tests of threads: run-queue order against a model, the TCB life cycle
//! through configure, resume and deletion, decode errors, and register
//! sanitising.

use std::collections::VecDeque;

use proptest::prelude::*;
use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::object::{ObjectType, Rights};

use super::memory::Arena;
use super::model::{POOL, UNTYPED, boot_with_pool, check_invariants, finish, invoke, retype, root_cap, slot};
use super::tcb::{ThreadState, UserContext, layout};
use super::*;

fn tcb_object(space: &ObjectSpace<Arena>, index: u64) -> PhysAddr {
    match space.cap(slot(index)) {
        Capability::Tcb { object } => object,
        other => panic!("slot {index} holds {other:?}"),
    }
}

fn set_priority(space: &mut ObjectSpace<Arena>, tcb: PhysAddr, priority: u8) {
    space.memory.write(tcb.offset(layout::PRIORITY), u64::from(priority) | 255 << 8);
}

proptest! {
    /// Enqueue, dequeue, rotate, choose, the yield shortcut's test and the
    /// fastpath's highest-other-priority against a model of 256 FIFO queues.
    #[test]
    fn run_queues_match_a_model(ops in prop::collection::vec((0u8..4, 0usize..12, 0u8..4), 1..200)) {
        let mut space = boot_with_pool();
        retype(&mut space, ObjectType::Tcb, 0, 16, 12);
        let tcbs: Vec<PhysAddr> = (16..28).map(|i| tcb_object(&space, i)).collect();
        // Priorities spread over all four bitmap words.
        for (n, &tcb) in tcbs.iter().enumerate() {
            set_priority(&mut space, tcb, [0u8, 63, 64, 200, 255, 63][n % 6]);
        }
        let mut model: Vec<VecDeque<PhysAddr>> = vec![VecDeque::new(); 256];
        for (op, which, _) in ops {
            let tcb = tcbs[which];
            let priority = usize::from(space.priority(tcb).0);
            match op {
                0 => {
                    if space.thread_state(tcb) != ThreadState::Runnable {
                        space.enqueue(tcb);
                        model[priority].push_back(tcb);
                    }
                }
                1 => {
                    space.dequeue(tcb);
                    model[priority].retain(|&t| t != tcb);
                }
                2 => {
                    space.rotate(tcb);
                    if let Some(position) = model[priority].iter().position(|&t| t == tcb) {
                        model[priority].remove(position);
                        model[priority].push_back(tcb);
                    }
                }
                _ => {
                    let expected = model.iter().rev().find_map(|q| q.front().copied());
                    prop_assert_eq!(space.choose_thread(), expected);
                }
            }
            let highest = model.iter().rposition(|q| !q.is_empty()).map(|p| p as u8);
            prop_assert_eq!(space.scheduler.highest(), highest);
            // A yield is a no-op exactly when the thread is alone at the top.
            let top = model.iter().rev().find(|q| !q.is_empty());
            let alone = top.is_some_and(|q| q.len() == 1 && q[0] == tcb);
            prop_assert_eq!(space.runs_alone(tcb), alone);
            for &t in &tcbs {
                let queued = model.iter().any(|q| q.contains(&t));
                prop_assert_eq!(space.thread_state(t) == ThreadState::Runnable, queued);
            }
        }
    }
}

/// A configured thread: TCB in slot 16, CNode (radix 4) in 17, PML4 in 18
/// with an ASID, IPC buffer frame in 19 mapped at 0x10000.
fn configured() -> (ObjectSpace<Arena>, PhysAddr) {
    let mut space = boot_with_pool();
    retype(&mut space, ObjectType::Tcb, 0, 16, 1);
    retype(&mut space, ObjectType::CNode, 4, 17, 1);
    retype(&mut space, ObjectType::Pml4, 0, 18, 1);
    retype(&mut space, ObjectType::Frame4K, 0, 19, 1);
    retype(&mut space, ObjectType::Pdpt, 0, 20, 1);
    retype(&mut space, ObjectType::PageDirectory, 0, 21, 1);
    retype(&mut space, ObjectType::PageTable, 0, 22, 1);
    invoke(&mut space, POOL, Label::AsidPoolAssign, &[], &[18]).expect("assign");
    for table in [20, 21, 22] {
        invoke(&mut space, table, Label::PageTableMap, &[0x10000], &[18]).expect("map table");
    }
    let rw = (Rights::READ | Rights::WRITE).bits();
    invoke(&mut space, 19, Label::FrameMap, &[0x10000, rw, 0], &[18]).expect("map frame");
    let tcb = tcb_object(&space, 16);
    let configure = space
        .decode_tcb(space.cap(slot(16)), Label::TcbConfigure, &[0x10000], &[slot(17), slot(18), slot(19)])
        .expect("configure");
    space.perform_tcb(configure);
    (space, tcb)
}

#[test]
fn a_configured_thread_runs_and_its_deletion_empties_its_slots() {
    let (mut space, tcb) = configured();
    assert!(matches!(space.cap(ObjectSpace::<Arena>::tcb_slot(tcb, 0)), Capability::CNode { radix: 4, .. }));
    assert!(matches!(
        space.cap(ObjectSpace::<Arena>::tcb_slot(tcb, 1)),
        Capability::Pml4 { asid: Some(_), .. }
    ));
    let frame = space.cap(slot(19)).region().expect("frame").0;
    assert_eq!(space.ipc_buffer(tcb), Some((frame, 0x10000)));
    // New threads start with the reset FPU state and safe registers.
    assert_eq!(space.memory.read(tcb.offset(layout::FPU)), 0x037f);
    assert_eq!(space.context(tcb).rflags & (1 << 9), 1 << 9, "interrupts enabled in user mode");
    let resume = space.decode_tcb(space.cap(slot(16)), Label::TcbResume, &[], &[]).expect("resume");
    space.perform_tcb(resume);
    assert_eq!(space.thread_state(tcb), ThreadState::Runnable);
    assert_eq!(space.choose_thread(), Some(tcb));
    check_invariants(&space);
    // The TCB holds copies of the CNode and PML4 capabilities; deleting the
    // originals leaves the TCB's copies as the last ones.
    finish(&mut space, 1, |s, b| s.delete(slot(17), b));
    finish(&mut space, 1, |s, b| s.delete(slot(18), b));
    assert!(space.pml4_of(1).is_some(), "the TCB's copy keeps the address space");
    // Deleting the TCB takes it off the run queue and, through a zombie,
    // deletes its copies, which were the last: the CNode and ASID go too.
    finish(&mut space, 1, |s, b| s.delete(slot(16), b));
    assert!(space.cap(slot(16)).is_null());
    assert_eq!(space.choose_thread(), None);
    assert_eq!(space.pml4_of(1), None);
    assert!(space.cap(ObjectSpace::<Arena>::tcb_slot(tcb, 0)).is_null());
    check_invariants(&space);
}

#[test]
fn revoking_the_untyped_destroys_configured_threads() {
    let (mut space, tcb) = configured();
    let resume = space.decode_tcb(space.cap(slot(16)), Label::TcbResume, &[], &[]).expect("resume");
    space.perform_tcb(resume);
    finish(&mut space, 2, |s, b| s.revoke(slot(UNTYPED), b));
    assert_eq!(space.choose_thread(), None, "a destroyed thread must not be scheduled");
    assert_eq!(space.thread_state(tcb), ThreadState::Inactive);
    check_invariants(&space);
}

#[test]
fn tcb_decode_errors() {
    let (mut space, _) = configured();
    let tcb = space.cap(slot(16));
    assert_eq!(
        space.decode_tcb(tcb, Label::TcbConfigure, &[0x10000], &[slot(17), slot(18)]),
        Err(InvocationError::DeleteFirst),
        "already configured"
    );
    retype(&mut space, ObjectType::Tcb, 0, 30, 1);
    let fresh = space.cap(slot(30));
    assert_eq!(
        space.decode_tcb(fresh, Label::TcbConfigure, &[], &[]),
        Err(InvocationError::TruncatedMessage { needed: 1 })
    );
    assert_eq!(
        space.decode_tcb(fresh, Label::TcbConfigure, &[0], &[slot(18), slot(18)]),
        Err(InvocationError::InvalidCapability { index: 1 })
    );
    assert_eq!(
        space.decode_tcb(fresh, Label::TcbConfigure, &[0], &[slot(17), slot(17)]),
        Err(InvocationError::InvalidCapability { index: 2 })
    );
    assert_eq!(
        space.decode_tcb(fresh, Label::TcbConfigure, &[0x10008], &[slot(17), slot(18), slot(18)]),
        Err(InvocationError::InvalidCapability { index: 3 })
    );
    assert_eq!(
        space.decode_tcb(fresh, Label::TcbConfigure, &[0x10ff8], &[slot(17), slot(18), slot(19)]),
        Err(InvocationError::AlignmentError),
        "the IPC buffer must fit in its frame"
    );
    // All of it, the VCPU register block at its end included (1,168 bytes).
    let last_fit = 0x11000 - core::mem::size_of::<strata_abi::bootinfo::IpcBuffer>() as u64;
    assert_eq!(
        space.decode_tcb(fresh, Label::TcbConfigure, &[last_fit + 8], &[slot(17), slot(18), slot(19)]),
        Err(InvocationError::AlignmentError),
        "its last word would be past the frame"
    );
    assert_ne!(
        space.decode_tcb(fresh, Label::TcbConfigure, &[last_fit], &[slot(17), slot(18), slot(19)]),
        Err(InvocationError::AlignmentError),
    );
    assert_eq!(space.decode_tcb(fresh, Label::TcbResume, &[], &[]), Err(InvocationError::IllegalOperation));
    // Priority is limited by the authority's maximum controlled priority (0 for a new TCB).
    assert_eq!(
        space.decode_tcb(fresh, Label::TcbSetPriority, &[5, 0], &[slot(16)]),
        Err(InvocationError::RangeError { min: 0, max: 0 })
    );
    let authority = tcb_object(&space, 16);
    set_priority(&mut space, authority, 100);
    let set =
        space.decode_tcb(fresh, Label::TcbSetPriority, &[90, 80], &[slot(16)]).expect("within the limit");
    space.perform_tcb(set);
    assert_eq!(space.priority(tcb_object(&space, 30)), (90, 80));
    assert_eq!(
        space.decode_tcb(root_cap(), Label::TcbResume, &[], &[]),
        Err(InvocationError::InvalidCapability { index: 0 })
    );
}

#[test]
fn written_registers_are_sanitised() {
    let (mut space, tcb) = configured();
    let mut words = [0u64; 18];
    words[15] = 0xffff_8000_0000_1000; // rip in the kernel half
    words[17] = 0x3000 | 0x100 | 0x4000 | 0x1; // IOPL 3, TF, NT, CF
    let write = space.decode_tcb(space.cap(slot(16)), Label::TcbWriteRegisters, &words, &[]).expect("write");
    space.perform_tcb(write);
    let context = space.context(tcb);
    assert_eq!(context.rip, 0);
    assert_eq!(context.rflags, 0x1 | 0x2 | 0x200, "only CF survives; IF and bit 1 are set");
    assert_eq!(UserContext { rip: 0x40_1000, ..UserContext::default() }.sanitised().rip, 0x40_1000);
    assert_eq!(
        space.decode_tcb(space.cap(slot(16)), Label::TcbWriteRegisters, &words[..17], &[]),
        Err(InvocationError::TruncatedMessage { needed: 18 })
    );
}

/// A running thread goes on until it yields, unless a thread of higher
/// priority becomes runnable: that one runs at once, and the interrupted
/// thread is first among its equals afterwards.
#[test]
fn a_woken_thread_of_higher_priority_runs_at_once() {
    let mut space = boot_with_pool();
    retype(&mut space, ObjectType::Tcb, 0, 16, 3);
    let [low, peer, high] = [16, 17, 18].map(|i| tcb_object(&space, i));
    for (tcb, priority) in [(low, 100), (peer, 100), (high, 200)] {
        set_priority(&mut space, tcb, priority);
    }
    space.enqueue(low);
    space.enqueue(peer);
    assert_eq!(space.next_thread(None, false), Some(low));
    assert_eq!(space.next_thread(Some(low), false), Some(low), "no reason to switch");
    space.enqueue(high);
    assert_eq!(space.next_thread(Some(low), false), Some(high), "woken higher priority runs");
    space.dequeue(high);
    assert_eq!(space.next_thread(Some(high), false), Some(low), "the interrupted thread resumes first");
    assert_eq!(space.next_thread(Some(low), true), Some(peer), "a yield lets its equal run");
}

/// The IPC fastpath's caches in a new TCB are keyed on a word no slot
/// holds, so its first lookup and first switch cannot hit: a zero key would
/// match an empty CSpace root (slot 0, physical 0) or VSpace.
#[test]
fn a_new_tcbs_fastpath_caches_match_no_capability() {
    let mut space = boot_with_pool();
    retype(&mut space, ObjectType::Tcb, 0, 16, 1);
    let tcb = tcb_object(&space, 16);
    for cache in [layout::LOOKUP_CACHE, layout::CR3_CACHE] {
        let key = space.memory.read(tcb.offset(cache));
        assert!(
            Capability::decode_fields([key, 0]).is_err() && key != 0,
            "cache at {cache:#x} starts with key {key:#x}"
        );
    }
}

#[test]
fn the_tcb_fields_do_not_overlap_and_fit() {
    use super::ipc::FAULT_WORDS;
    let mut fields = [
        ("context", layout::CONTEXT, 8 * super::tcb::CONTEXT_WORDS as u64),
        ("state", layout::STATE, 8),
        ("priority", layout::PRIORITY, 8),
        ("IPC buffer", layout::IPC_BUFFER, 8),
        ("queue next", layout::QUEUE_NEXT, 8),
        ("queue previous", layout::QUEUE_PREV, 8),
        ("blocked on", layout::BLOCKED_ON, 8),
        ("send badge", layout::SEND_BADGE, 8),
        ("send flags", layout::SEND_FLAGS, 8),
        ("reply to", layout::REPLY_TO, 8),
        ("replier", layout::REPLIER, 8),
        ("bound notification", layout::BOUND_NOTIFICATION, 8),
        ("slots", layout::SLOTS, SLOT_BYTES << super::tcb::TCB_SLOTS_RADIX),
        ("fault endpoint", layout::FAULT_ENDPOINT, 8),
        ("fault words", layout::FAULT_WORDS, 8 * FAULT_WORDS as u64),
        ("fault label", layout::FAULT_LABEL, 8),
        ("VCPU", layout::VCPU, 8),
        ("lookup cache", layout::LOOKUP_CACHE, 32),
        ("CR3 cache", layout::CR3_CACHE, 24),
        ("FPU", layout::FPU, 512),
    ];
    fields.sort_by_key(|f| f.1);
    for pair in fields.windows(2) {
        let ((a, start, size), (b, next, _)) = (pair[0], pair[1]);
        assert!(start + size <= next, "{a} ({start:#x}, {size} bytes) runs into {b} ({next:#x})");
    }
    let (_, last, size) = fields[fields.len() - 1];
    assert!(last + size <= 1 << strata_abi::object::TCB_SIZE_BITS);
}

#[test]
fn a_thread_holds_its_ipc_buffer_frame_so_it_cannot_be_reused_under_it() {
    let (mut space, t) = super::model::world(1);
    let (buffer, _) = space.ipc_buffer(t[0]).expect("configured with a buffer");
    // Deleting the capability the buffer was configured with changes nothing:
    // the TCB holds a copy of its own, unmapped.
    finish(&mut space, 8, |s, b| s.delete(slot(50), b));
    assert_eq!(space.ipc_buffer(t[0]).map(|b| b.0), Some(buffer));
    let held = ObjectSpace::<Arena>::tcb_slot(t[0], super::tcb::BUFFER_SLOT);
    assert!(matches!(space.cap(held), Capability::Frame { mapping: None, .. }));
    check_invariants(&space);
    // Only when that copy goes (with the memory's revoke, or the TCB) is the buffer gone.
    finish(&mut space, 8, |s, b| s.delete(held, b));
    assert_eq!(space.ipc_buffer(t[0]), None);
    check_invariants(&space);
}
