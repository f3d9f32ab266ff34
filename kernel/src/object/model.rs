//! A reference world for tests and fuzzing of the object layer: booted
//! object spaces over an [`Arena`], helpers to drive them through the real
//! decode and system-call paths, and the invariants every state must keep,
//! checked against an independent reconstruction of the derivation tree.
//!
//! Compiled for the host tests and for the fuzz targets (`tests/fuzz`,
//! feature `fuzzing`), never into the kernel binary.

#![allow(missing_docs, clippy::missing_panics_doc)]

extern crate std;

use std::collections::{HashMap, HashSet};
use std::vec::Vec;

use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::message::MessageInfo;
use strata_abi::object::{ObjectType, Rights};
use strata_abi::syscall::Syscall;

use super::delete::{Budget, Progress};
use super::memory::Arena;
use super::tcb::UserContext;
use super::*;
use crate::syscall::Outcome;

pub const ROOT_RADIX: u8 = 6;
pub const ROOT_CNODE: PhysAddr = PhysAddr(0x1_0000);
pub const UNTYPED_BASE: PhysAddr = PhysAddr(0x10_0000);
pub const UNTYPED_BITS: u8 = 20;

pub fn root_cap() -> Capability {
    Capability::CNode { object: ROOT_CNODE, radix: ROOT_RADIX, guard_size: 0, guard: 0 }
}

/// A booted object space: root CNode (cap to itself in slot 0), a 1 MiB
/// Untyped in slot 1.
pub fn boot() -> ObjectSpace<Arena> {
    let mut space = ObjectSpace::new(Arena::new(0, 4 << 20));
    // VCPUs and GuestSpaces can be made, with the SVM layout (plain memory).
    space.virt.backend = super::vcpu::Backend::Svm;
    space.insert_root(Slot::in_cnode(ROOT_CNODE, 0), root_cap());
    space.insert_root(
        Slot::in_cnode(ROOT_CNODE, 1),
        Capability::Untyped { base: UNTYPED_BASE, size_bits: UNTYPED_BITS, free_index: 0, device: false },
    );
    space
}

/// Runs an operation to completion with a small budget per call, as the
/// kernel does across preemptions.
pub fn finish(
    space: &mut ObjectSpace<Arena>,
    budget: u32,
    mut op: impl FnMut(&mut ObjectSpace<Arena>, &mut Budget) -> Progress,
) {
    for _ in 0..200_000 {
        if op(space, &mut Budget(budget)) == Progress::Done {
            return;
        }
    }
    panic!("operation did not finish in 200000 preemptions");
}

/// Every derivation-list entry, in list order (lists one after another),
/// and every CNode they name, starting from the root. List heads are found
/// by following back links, since a list can start in a CNode that only the
/// list itself still reaches (its last capability was stored inside it).
pub fn scan(space: &ObjectSpace<Arena>) -> (HashSet<(PhysAddr, u8)>, Vec<Slot>) {
    let mut cnodes = HashSet::from([(ROOT_CNODE, ROOT_RADIX)]);
    loop {
        let mut heads = std::collections::BTreeSet::new();
        for &(object, radix) in &cnodes {
            for i in 0..1u64 << radix {
                let mut slot = Slot::in_cnode(object, i);
                if space.cap(slot).is_null() {
                    continue;
                }
                for _ in 0..100_000 {
                    match space.mdb(slot).prev {
                        Some(prev) => slot = prev,
                        None => break,
                    }
                }
                assert!(space.mdb(slot).prev.is_none(), "back links from {slot:?} loop");
                heads.insert(slot);
            }
        }
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        for head in heads {
            let mut previous = None;
            let mut current = Some(head);
            while let Some(slot) = current {
                assert!(seen.insert(slot), "slot {slot:?} appears twice in the derivation lists");
                assert_eq!(space.mdb(slot).prev, previous, "broken back link at {slot:?}");
                assert!(!space.cap(slot).is_null(), "empty slot {slot:?} in a derivation list");
                entries.push(slot);
                previous = Some(slot);
                current = space.mdb(slot).next;
            }
        }
        let before = cnodes.len();
        for &slot in &entries {
            if let Capability::CNode { object, radix, .. } | Capability::Zombie { object, radix, .. } =
                space.cap(slot)
            {
                cnodes.insert((object, radix));
            }
        }
        if cnodes.len() == before {
            return (cnodes, entries);
        }
    }
}

/// The parent of each entry, reconstructed from list order and
/// `is_parent_of` (descendants of an entry are the run right after it).
pub fn parents(space: &ObjectSpace<Arena>, entries: &[Slot]) -> HashMap<Slot, Option<Slot>> {
    let mut parents = HashMap::new();
    let mut stack: Vec<Slot> = Vec::new();
    for &slot in entries {
        if space.mdb(slot).prev.is_none() {
            stack.clear();
        }
        while let Some(&top) = stack.last() {
            if space.is_parent_of(top, slot) {
                break;
            }
            stack.pop();
        }
        parents.insert(slot, stack.last().copied());
        stack.push(slot);
    }
    parents
}

pub fn check_invariants(space: &ObjectSpace<Arena>) {
    let (cnodes, entries) = scan(space);
    check_references(space, &entries);
    let listed: HashSet<Slot> = entries.iter().copied().collect();
    // Every occupied slot of a live CNode is in a list; every empty slot has no links.
    for &(object, radix) in &cnodes {
        for i in 0..1u64 << radix {
            let slot = Slot::in_cnode(object, i);
            if space.cap(slot).is_null() {
                assert_eq!(space.mdb(slot), MdbNode::default(), "empty slot {slot:?} has links");
            } else {
                assert!(listed.contains(&slot), "occupied slot {slot:?} is in no derivation list");
            }
        }
    }
    let parents = parents(space, &entries);
    let mut objects: HashMap<(u8, PhysAddr), (PhysAddr, u64)> = HashMap::new();
    for &slot in &entries {
        let cap = space.cap(slot);
        if let Capability::Untyped { size_bits, free_index, .. } = cap {
            assert!(free_index <= 1 << size_bits, "free index past the end of {cap:?}");
        }
        // Rights never grow from parent to child; badges are inherited.
        if let Some(Some(parent)) = parents.get(&slot) {
            let parent_cap = space.cap(*parent);
            if std::mem::discriminant(&parent_cap) == std::mem::discriminant(&cap) {
                assert!(
                    parent_cap.rights().contains(cap.rights()),
                    "{cap:?} has more rights than its parent {parent_cap:?}"
                );
                if let (Some(pb), Some(cb)) = (parent_cap.badge(), cap.badge()) {
                    assert!(pb == 0 || pb == cb, "badge changed from {pb} to {cb}");
                }
            }
            // An object lies inside the Untyped it came from, below its free index.
            if let Capability::Untyped { base, free_index, .. } = parent_cap {
                let (object, size) = cap.region().expect("objects have regions");
                assert!(
                    base <= object && object.get() + size <= base.get() + free_index,
                    "{cap:?} outside its Untyped {parent_cap:?}"
                );
            }
        }
        if let (false, Some((object, size))) = (matches!(cap, Capability::Untyped { .. }), cap.region()) {
            // Kinds whose capabilities may name the same memory as the same object.
            let kind = match cap {
                Capability::Zombie { .. } | Capability::CNode { .. } => 4, // a dying CNode is still the CNode
                Capability::Endpoint { .. } => 2,
                Capability::Notification { .. } => 3,
                Capability::Frame { .. } => 6,
                Capability::PageTable { .. } | Capability::Pml4 { .. } => 7,
                Capability::AsidPool { .. } => 8,
                _ => 5,
            };
            objects.insert((kind, object), (object, size));
        }
    }
    // No two distinct live objects overlap.
    let mut regions: Vec<(u64, u64)> = objects.values().map(|(o, s)| (o.get(), o.get() + s)).collect();
    regions.sort();
    for pair in regions.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "live objects overlap: {:x?} and {:x?}", pair[0], pair[1]);
    }
}

pub fn slot(index: u64) -> Slot {
    Slot::in_cnode(ROOT_CNODE, index)
}

pub const UNTYPED: u64 = 1;
/// Where `boot_with_pool` puts the ASID control capability.
pub const ASID_CONTROL: u64 = 2;
pub const POOL: u64 = 4;

/// Boot plus an ASID control capability and one ASID pool.
pub fn boot_with_pool() -> ObjectSpace<Arena> {
    let mut space = boot();
    space.insert_root(slot(ASID_CONTROL), Capability::AsidControl);
    // The pool comes from memory of its own, so that revoking the test
    // Untyped (which holds all the address spaces) leaves it in place.
    space.insert_root(
        slot(3),
        Capability::Untyped { base: PhysAddr(0x20_0000), size_bits: 12, free_index: 0, device: false },
    );
    let make = space
        .decode_vspace(slot(ASID_CONTROL), Label::AsidControlMakePool, &[POOL, 6], &[slot(3), slot(0)])
        .expect("pool");
    space.perform_vspace(make);
    space
}

pub fn retype(space: &mut ObjectSpace<Arena>, kind: ObjectType, size: u64, first: u64, count: u64) {
    let retype = space
        .decode_retype(slot(UNTYPED), kind as u64, size, root_cap(), first, count)
        .unwrap_or_else(|e| panic!("retype {kind:?}: {e:?}"));
    space.perform_retype(&retype);
}

pub fn invoke(
    space: &mut ObjectSpace<Arena>,
    target: u64,
    label: Label,
    words: &[u64],
    extra: &[u64],
) -> Result<(), InvocationError> {
    let extra: Vec<Slot> = extra.iter().map(|&i| slot(i)).collect();
    let invocation = space.decode_vspace(slot(target), label, words, &extra)?;
    space.perform_vspace(invocation);
    Ok(())
}

/// Slots: CNode 17 (the threads' CSpace, radix 6), PML4 18, tables 20-22,
/// endpoint 30, notification 31; threads from 40 with IPC buffer frames
/// from 50 mapped at 0x10000 + 0x1000 * n.
pub fn world(threads: u64) -> (ObjectSpace<Arena>, Vec<PhysAddr>) {
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
pub fn cptr(n: u64) -> u64 {
    n << 58
}

pub fn syscall(
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
    context.set_message(&[w(0), w(1), w(2), w(3)]);
    context.rip = 0x40_1002;
    space.set_context(tcb, &context);
    space.handle_syscall(tcb)
}

pub fn received(space: &ObjectSpace<Arena>, tcb: PhysAddr) -> (u64, MessageInfo, [u64; 4]) {
    let c: UserContext = space.context(tcb);
    (c.rdi, MessageInfo::decode(c.rsi), [c.rdx, c.r8, c.r9, c.r10])
}

pub fn mint(space: &mut ObjectSpace<Arena>, dest: u64, source: u64, rights: Rights, badge: u64) {
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

/// Slots inside CNodes that were live before and are now gone, or are
/// being destroyed (held by a zombie).
fn destroyed_regions(space: &ObjectSpace<Arena>, before: &HashSet<(PhysAddr, u8)>) -> Vec<(u64, u64)> {
    let (after, entries) = scan(space);
    let dying: HashSet<(PhysAddr, u8)> = entries
        .iter()
        .filter_map(|&slot| match space.cap(slot) {
            Capability::Zombie { object, radix, .. } => Some((object, radix)),
            _ => None,
        })
        .collect();
    before
        .iter()
        .filter(|cnode| !after.contains(cnode) || dying.contains(cnode))
        .map(|(o, r)| (o.get(), o.get() + (1u64 << (u32::from(*r) + strata_abi::object::SLOT_SIZE_BITS))))
        .collect()
}

/// What a revoke of `target` must do, taken before it: afterwards the
/// target has no children, every descendant is gone, and nothing else
/// changed (except inside CNodes the revoke destroyed).
pub struct RevokeCheck {
    target: Slot,
    cnodes_before: HashSet<(PhysAddr, u8)>,
    descendants: HashSet<Slot>,
    snapshot: Vec<(Slot, Capability)>,
}

impl RevokeCheck {
    /// Records the tree before a revoke of `target`.
    pub fn before(space: &ObjectSpace<Arena>, target: Slot) -> Self {
        let (cnodes_before, entries) = scan(space);
        let parents = parents(space, &entries);
        let is_descendant = |mut s: Slot| loop {
            match parents.get(&s).copied().flatten() {
                Some(p) if p == target => return true,
                Some(p) => s = p,
                None => return false,
            }
        };
        let descendants: HashSet<Slot> = entries.iter().copied().filter(|&s| is_descendant(s)).collect();
        let snapshot = entries.iter().map(|&s| (s, space.cap(s))).collect();
        Self { target, cnodes_before, descendants, snapshot }
    }

    /// Checks the tree after the revoke finished.
    pub fn after(self, space: &ObjectSpace<Arena>) {
        let target = self.target;
        assert!(!space.has_children(target), "revoke left children");
        // The revoked capability may itself have been destroyed (it lived
        // in a CNode the revoke destroyed): the revoke then ends there.
        let revoker_destroyed = space.cap(target).is_null();
        let destroyed = destroyed_regions(space, &self.cnodes_before);
        let inside_destroyed = |s: Slot| destroyed.iter().any(|&(a, b)| (a..b).contains(&s.0.get()));
        for (slot, cap) in self.snapshot {
            if self.descendants.contains(&slot) {
                let now = space.cap(slot);
                // With the revoker gone the revoke ends early: the rest stay
                // (consistent, checked by the invariants). Breaking a zombie
                // cycle swaps slot contents, so a descendant's slot may now
                // hold another CNode's zombie.
                let acceptable = now.is_null()
                    || inside_destroyed(slot)
                    || revoker_destroyed
                    || matches!(now, Capability::Zombie { .. });
                assert!(acceptable, "descendant {slot:?} ({cap:?}, now {now:?}) survived revoke");
            } else if !inside_destroyed(slot) && slot != target {
                assert_eq!(space.cap(slot), cap, "revoke touched {slot:?}, which is not a descendant");
            }
        }
    }
}

/// Nothing refers to a deleted object: every thread in a run queue or an
/// IPC queue, every object a thread is blocked on, replies to or is bound
/// to, every thread a notification is bound to, and every notification an
/// interrupt line signals is live (some capability names it).
pub fn check_references(space: &ObjectSpace<Arena>, entries: &[Slot]) {
    use super::ipc::{NOTIFICATION_BOUND, NOTIFICATION_QUEUE};
    use super::tcb::{ThreadState, layout};
    let mut tcbs = HashSet::new();
    let mut endpoints = HashSet::new();
    let mut notifications = HashSet::new();
    let mut vcpus = HashSet::new();
    for &slot in entries {
        match space.cap(slot) {
            Capability::Tcb { object } => {
                tcbs.insert(object);
            }
            Capability::Vcpu { object } => {
                vcpus.insert(object);
            }
            Capability::Endpoint { object, .. } => {
                endpoints.insert(object);
            }
            Capability::Notification { object, .. } => {
                notifications.insert(object);
            }
            _ => {}
        }
    }
    let word = |address: PhysAddr| space.memory.read(address);
    let live_tcb = |address: u64, what: &str| {
        assert!(tcbs.contains(&PhysAddr(address)), "{what} names {address:#x}, which is not a live thread");
    };
    // Walks a queue of threads linked through their queue links.
    let walk = |head: Option<PhysAddr>, what: &str| {
        let mut next = head;
        for _ in 0..10_000 {
            let Some(tcb) = next else { return };
            live_tcb(tcb.get(), what);
            next = match word(tcb.offset(layout::QUEUE_NEXT)) {
                0 => None,
                n => Some(PhysAddr(n)),
            };
        }
        panic!("{what} does not end");
    };
    for head in space.scheduler.heads() {
        walk(Some(head), "a run queue");
    }
    for &endpoint in &endpoints {
        walk(Some(PhysAddr(word(endpoint))).filter(|a| a.get() != 0), "an endpoint queue");
    }
    for &notification in &notifications {
        let queue = notification.offset(NOTIFICATION_QUEUE);
        walk(Some(PhysAddr(word(queue))).filter(|a| a.get() != 0), "a notification queue");
        match word(notification.offset(NOTIFICATION_BOUND)) {
            0 => {}
            bound => live_tcb(bound, "a notification's bound thread"),
        }
    }
    for &tcb in &tcbs {
        let state = space.thread_state(tcb);
        let blocked_on = word(tcb.offset(layout::BLOCKED_ON));
        match state {
            ThreadState::BlockedOnSend | ThreadState::BlockedOnReceive => assert!(
                endpoints.contains(&PhysAddr(blocked_on)),
                "a thread blocked on {blocked_on:#x}, which is not a live endpoint"
            ),
            ThreadState::BlockedOnNotification => assert!(
                notifications.contains(&PhysAddr(blocked_on)),
                "a thread waits on {blocked_on:#x}, which is not a live notification"
            ),
            _ => {}
        }
        for (field, what) in [(layout::REPLY_TO, "a reply-to link"), (layout::REPLIER, "a replier link")] {
            match word(tcb.offset(field)) {
                0 => {}
                other => live_tcb(other, what),
            }
        }
        match word(tcb.offset(layout::BOUND_NOTIFICATION)) {
            0 => {}
            n => assert!(
                notifications.contains(&PhysAddr(n)),
                "a thread is bound to {n:#x}, not a live notification"
            ),
        }
    }
    // A VCPU and its thread name each other, and both are live.
    for &vcpu in &vcpus {
        match word(vcpu.offset(super::vcpu::layout::TCB)) {
            0 => {}
            tcb => {
                live_tcb(tcb, "a VCPU's thread");
                assert_eq!(
                    word(PhysAddr(tcb).offset(layout::VCPU)),
                    vcpu.get(),
                    "a VCPU's thread names another"
                );
            }
        }
    }
    for &tcb in &tcbs {
        match word(tcb.offset(layout::VCPU)) {
            0 => {}
            vcpu => {
                assert!(vcpus.contains(&PhysAddr(vcpu)), "a thread is bound to {vcpu:#x}, not a live VCPU")
            }
        }
    }
    for line in &space.irqs.state {
        if let Some((notification, _)) = line.notification {
            assert!(notifications.contains(&notification), "an IRQ line signals a deleted notification");
        }
    }
}
