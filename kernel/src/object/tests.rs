//! Property tests of the object layer: random sequences of retype, copy,
//! mint, move, mutate, delete and revoke, issued through the real decode
//! path with one- and two-level CSpace addresses and small preemption
//! budgets. After every step the invariants of the derivation tree and of
//! memory are checked against an independent reconstruction.

use proptest::prelude::*;
use strata_abi::error::{InvocationError, LookupFailure};
use strata_abi::invocation::Label;
use strata_abi::object::{ObjectType, Rights};

use super::delete::{Budget, Progress};
use super::memory::Arena;
use super::model::{
    ROOT_CNODE, ROOT_RADIX, RevokeCheck, UNTYPED_BASE, UNTYPED_BITS, boot, check_invariants, finish, root_cap,
};
use super::*;

/// A choice among however many candidates there are when it is used (the
/// same fixed-point mapping as `proptest::sample::Index`, but constructible,
/// so a shrunk failure can be replayed as code).
#[derive(Debug, Clone, Copy)]
struct Pick(u64);

impl Pick {
    fn index(&self, size: usize) -> usize {
        ((size as u128 * u128::from(self.0)) >> 64) as usize
    }
}

/// One random operation; indices pick addresses from those reachable now.
#[derive(Debug, Clone)]
enum Op {
    Retype { untyped: Pick, kind: u8, size: u8, dest: Pick, count: u8 },
    Copy { src: Pick, dest: Pick, rights: u8 },
    Mint { src: Pick, dest: Pick, rights: u8, data: u64 },
    Move { src: Pick, dest: Pick },
    Mutate { src: Pick, dest: Pick, data: u64 },
    Delete { slot: Pick, budget: u8 },
    Revoke { slot: Pick, budget: u8 },
}

fn any_op() -> impl Strategy<Value = Op> {
    let i = || any::<u64>().prop_map(Pick);
    prop_oneof![
        3 => (i(), 0u8..6, 0u8..14, i(), 1u8..4).prop_map(|(untyped, kind, size, dest, count)| Op::Retype { untyped, kind, size, dest, count }),
        3 => (i(), i(), 0u8..16).prop_map(|(src, dest, rights)| Op::Copy { src, dest, rights }),
        2 => (i(), i(), 0u8..16, prop_oneof![Just(0u64), 1u64..4, (0u64..1 << 8).prop_map(|g| g << 6 | 2)]).prop_map(|(src, dest, rights, data)| Op::Mint { src, dest, rights, data }),
        1 => (i(), i()).prop_map(|(src, dest)| Op::Move { src, dest }),
        1 => (i(), i(), prop_oneof![Just(0u64), 1u64..3]).prop_map(|(src, dest, data)| Op::Mutate { src, dest, data }),
        2 => (i(), 1u8..6).prop_map(|(slot, budget)| Op::Delete { slot, budget }),
        1 => (i(), 1u8..6).prop_map(|(slot, budget)| Op::Revoke { slot, budget }),
    ]
}

/// Addresses (index, depth) of every slot reachable from the root in one
/// or two levels (second-level CNodes reached through guard-free caps).
fn addresses(space: &ObjectSpace<Arena>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for i in 0..1u64 << ROOT_RADIX {
        out.push((i, u64::from(ROOT_RADIX)));
        // Second-level CNodes are small (radix 4 or less) and guard-free.
        if let Capability::CNode { radix: radix @ 0..=4, guard_size: 0, .. } =
            space.cap(Slot::in_cnode(ROOT_CNODE, i))
        {
            for j in 0..1u64 << radix {
                out.push(((i << radix) | j, u64::from(ROOT_RADIX + radix)));
            }
        }
    }
    out
}

fn run(space: &mut ObjectSpace<Arena>, op: &Op) -> Result<(), InvocationError> {
    let addrs = addresses(space);
    let root = root_cap();
    let at = |space: &ObjectSpace<Arena>, (index, depth): (u64, u64)| {
        space.lookup_slot(root, index, depth as u8).map(|s| space.cap(s)).unwrap_or(Capability::Null)
    };
    let occupied: Vec<(u64, u64)> = addrs.iter().copied().filter(|&a| !at(space, a).is_null()).collect();
    let empty: Vec<(u64, u64)> = addrs.iter().copied().filter(|&a| at(space, a).is_null()).collect();
    let untypeds: Vec<(u64, u64)> =
        occupied.iter().copied().filter(|&a| matches!(at(space, a), Capability::Untyped { .. })).collect();
    let cnodes: Vec<Capability> = occupied
        .iter()
        .map(|&a| at(space, a))
        .filter(|c| matches!(c, Capability::CNode { guard_size: 0, .. }))
        .collect();
    // Mostly a sensible choice; one time in ten any address, to keep the
    // error paths exercised.
    let choose = |list: &[(u64, u64)], index: &Pick| {
        let n = index.index(10 * addrs.len());
        if n.is_multiple_of(10) || list.is_empty() { addrs[n / 10] } else { list[n / 10 % list.len()] }
    };
    let pick = |index: &Pick| choose(&occupied, index);
    // Deleting the root's own capability (slot 0) or the boot Untyped
    // (slot 1) ends the interesting part of a sequence: only the
    // one-in-ten random pick does it.
    let deletable: Vec<(u64, u64)> =
        occupied.iter().copied().filter(|&(i, d)| d != u64::from(ROOT_RADIX) || i > 1).collect();
    let pick_deletable = |index: &Pick| choose(&deletable, index);
    let pick_empty = |index: &Pick| choose(&empty, index);
    let cnode_op = |space: &mut ObjectSpace<Arena>, label: Label, words: &[u64], budget: u32| {
        let invocation = space.decode_cnode(root, label, words, Some(root))?;
        finish(space, budget, |s, b| s.perform_cnode(invocation, b));
        Ok(())
    };
    match op {
        Op::Retype { untyped, kind, size, dest, count } => {
            let (index, depth) = choose(&untypeds, untyped);
            let slot = space
                .lookup_slot(root, index, depth as u8)
                .map_err(|failure| InvocationError::FailedLookup { source: true, failure })?;
            // Into the root, or into another guard-free CNode.
            let n = dest.index(1 << 20);
            let destination = if n % 3 == 0 || cnodes.is_empty() { root } else { cnodes[n % cnodes.len()] };
            let Capability::CNode { radix, .. } = destination else { unreachable!() };
            let first = (n as u64 / 3) % (1 << radix);
            // CNodes and endpoints are the interesting objects; sizes stay small.
            let kind = [0u8, 4, 4, 2, 3, 5][usize::from(*kind) % 6];
            let user_size = match kind {
                0 => u64::from(*size) + 6,
                4 => u64::from(*size % 3) + 1,
                _ => 0,
            };
            let retype = space.decode_retype(
                slot,
                u64::from(kind),
                user_size,
                destination,
                first,
                u64::from(*count),
            )?;
            space.perform_retype(&retype);
            Ok(())
        }
        Op::Copy { src, dest, rights } => {
            let (s, d) = (pick(src), pick_empty(dest));
            cnode_op(space, Label::CNodeCopy, &[d.0, d.1, s.0, s.1, u64::from(*rights)], 1)
        }
        Op::Mint { src, dest, rights, data } => {
            let (s, d) = (pick(src), pick_empty(dest));
            cnode_op(space, Label::CNodeMint, &[d.0, d.1, s.0, s.1, u64::from(*rights), *data], 1)
        }
        Op::Move { src, dest } => {
            let (s, d) = (pick(src), pick_empty(dest));
            cnode_op(space, Label::CNodeMove, &[d.0, d.1, s.0, s.1], 1)
        }
        Op::Mutate { src, dest, data } => {
            let (s, d) = (pick(src), pick_empty(dest));
            cnode_op(space, Label::CNodeMutate, &[d.0, d.1, s.0, s.1, *data], 1)
        }
        Op::Delete { slot, budget } => {
            let (i, d) = pick_deletable(slot);
            cnode_op(space, Label::CNodeDelete, &[i, d], u32::from(*budget))
        }
        Op::Revoke { slot, budget } => {
            let (i, d) = pick_deletable(slot);
            let target = space
                .lookup_slot(root, i, d as u8)
                .map_err(|failure| InvocationError::FailedLookup { source: false, failure })?;
            let check = RevokeCheck::before(space, target);
            cnode_op(space, Label::CNodeRevoke, &[i, d], u32::from(*budget))?;
            check.after(space);
            Ok(())
        }
    }
}

/// Proptest settings for the operation-sequence tests: 300 cases unless
/// `PROPTEST_CASES` says otherwise (for soaking).
pub(super) fn sequence_config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(300),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(sequence_config())]

    #[test]
    fn random_operation_sequences_keep_every_invariant(ops in prop::collection::vec(any_op(), 1..60)) {
        let mut space = boot();
        check_invariants(&space);
        for op in &ops {
            let _ = run(&mut space, op);
            check_invariants(&space);
        }
        // Revoking the boot Untyped returns every object: nothing derived remains.
        let untyped_slot = (0..1u64 << ROOT_RADIX)
            .map(|i| Slot::in_cnode(ROOT_CNODE, i))
            .find(|&s| {
                matches!(space.cap(s), Capability::Untyped { base, size_bits, .. }
                    if base == UNTYPED_BASE && size_bits == UNTYPED_BITS)
            });
        if let Some(slot) = untyped_slot {
            finish(&mut space, 3, |s, b| s.revoke(slot, b));
            check_invariants(&space);
            prop_assert!(!space.has_children(slot));
            // The Untyped may have destroyed its own CNode (the root's only
            // capability was stored in an object made from it).
            if space.cap(slot).is_null() {
                return Ok(());
            }
            let retype = space.decode_retype(slot, ObjectType::Untyped as u64, u64::from(UNTYPED_BITS), root_cap(), 0, 1);
            // The whole region is free again (if a destination slot is free).
            if let Err(e) = retype {
                prop_assert!(matches!(e, InvocationError::DeleteFirst), "{:?}", e);
            }
        }
    }
}

#[test]
fn copies_and_badged_mints_form_the_expected_tree() {
    let mut space = boot();
    let root = root_cap();
    let retype = space
        .decode_retype(Slot::in_cnode(ROOT_CNODE, 1), ObjectType::Endpoint as u64, 0, root, 2, 1)
        .expect("room");
    space.perform_retype(&retype);
    let ep = Slot::in_cnode(ROOT_CNODE, 2);
    let mint = |space: &mut ObjectSpace<Arena>, dest: u64, src: u64, rights: Rights, badge: u64| {
        let inv = space
            .decode_cnode(root, Label::CNodeMint, &[dest, 6, src, 6, rights.bits(), badge], Some(root))
            .expect("valid mint");
        assert_eq!(space.perform_cnode(inv, &mut Budget(1)), Progress::Done);
    };
    mint(&mut space, 3, 2, Rights::WRITE, 7); // badged child of the original
    mint(&mut space, 4, 3, Rights::all(), 0); // copy of the badged cap: keeps badge and WRITE only
    assert_eq!(
        space.cap(Slot::in_cnode(ROOT_CNODE, 4)),
        Capability::Endpoint { object: PhysAddr(0x10_0000), badge: 7, rights: Rights::WRITE }
    );
    // Re-badging a badged capability is refused.
    assert_eq!(
        space.decode_cnode(root, Label::CNodeMint, &[5, 6, 3, 6, 3, 9], Some(root)),
        Err(InvocationError::IllegalOperation)
    );
    assert!(space.is_parent_of(ep, Slot::in_cnode(ROOT_CNODE, 3)));
    assert!(space.is_parent_of(Slot::in_cnode(ROOT_CNODE, 3), Slot::in_cnode(ROOT_CNODE, 4)));
    // Revoking the badged capability removes its copy but not itself or the original.
    finish(&mut space, 1, |s, b| s.revoke(Slot::in_cnode(ROOT_CNODE, 3), b));
    assert!(space.cap(Slot::in_cnode(ROOT_CNODE, 4)).is_null());
    assert!(!space.cap(Slot::in_cnode(ROOT_CNODE, 3)).is_null());
    // Revoking the original removes the badged one.
    finish(&mut space, 1, |s, b| s.revoke(ep, b));
    assert!(space.cap(Slot::in_cnode(ROOT_CNODE, 3)).is_null());
    check_invariants(&space);
}

#[test]
fn decode_reports_each_error_with_its_data() {
    let space = boot();
    let root = root_cap();
    assert_eq!(
        space.decode_cnode(root, Label::CNodeCopy, &[2, 6, 1], Some(root)),
        Err(InvocationError::TruncatedMessage { needed: 5 })
    );
    assert_eq!(
        space.decode_cnode(root, Label::CNodeDelete, &[2, 0], None),
        Err(InvocationError::RangeError { min: 1, max: 64 })
    );
    assert_eq!(
        space.decode_cnode(root, Label::CNodeCopy, &[1, 6, 0, 6, 0], Some(root)),
        Err(InvocationError::DeleteFirst)
    );
    assert_eq!(
        space.decode_cnode(root, Label::CNodeCopy, &[2, 6, 9, 6, 0], Some(root)),
        Err(InvocationError::FailedLookup {
            source: true,
            failure: LookupFailure::MissingCapability { bits_left: 0 }
        })
    );
    assert_eq!(
        space.decode_cnode(root, Label::CNodeCopy, &[2, 5, 1, 6, 0], Some(root)),
        Err(InvocationError::FailedLookup {
            source: false,
            failure: LookupFailure::DepthMismatch { bits_left: 5, bits_found: 6 }
        })
    );
    // Untyped capabilities are never copied.
    assert_eq!(
        space.decode_cnode(root, Label::CNodeCopy, &[2, 6, 1, 6, 15], Some(root)),
        Err(InvocationError::IllegalOperation)
    );
    assert_eq!(
        space.decode_cnode(root, Label::CNodeMove, &[2, 6, 1, 6], None),
        Err(InvocationError::InvalidCapability { index: 1 })
    );
    let untyped = Slot::in_cnode(ROOT_CNODE, 1);
    assert_eq!(
        space.decode_retype(untyped, 99, 0, root, 2, 1),
        Err(InvocationError::InvalidArgument { index: 0 })
    );
    assert_eq!(
        space.decode_retype(untyped, 4, 0, root, 2, 1),
        Err(InvocationError::RangeError { min: 1, max: 24 })
    );
    assert_eq!(
        space.decode_retype(untyped, 2, 0, root, 2, 0),
        Err(InvocationError::RangeError { min: 1, max: 256 })
    );
    assert_eq!(
        space.decode_retype(untyped, 2, 0, root, 63, 2),
        Err(InvocationError::RangeError { min: 0, max: 63 })
    );
    assert_eq!(space.decode_retype(untyped, 2, 0, root, 0, 1), Err(InvocationError::DeleteFirst));
    assert_eq!(
        space.decode_retype(untyped, 0, 21, root, 2, 1),
        Err(InvocationError::NotEnoughMemory { available: 1 << 20 })
    );
    assert_eq!(
        space.decode_retype(Slot::in_cnode(ROOT_CNODE, 0), 2, 0, root, 2, 1),
        Err(InvocationError::InvalidCapability { index: 0 })
    );
}

#[test]
fn retype_aligns_objects_exhausts_and_resets_after_revoke() {
    let mut space = boot();
    let root = root_cap();
    let untyped = Slot::in_cnode(ROOT_CNODE, 1);
    let retype = space.decode_retype(untyped, ObjectType::Endpoint as u64, 0, root, 2, 3).expect("room");
    space.perform_retype(&retype);
    // A 4 KiB TCB after three 16-byte endpoints starts at the next 4 KiB boundary.
    let retype = space.decode_retype(untyped, ObjectType::Tcb as u64, 0, root, 5, 1).expect("room");
    assert_eq!(retype.first_object, PhysAddr(UNTYPED_BASE.get() + 0x1000));
    space.perform_retype(&retype);
    // The rest of the 1 MiB: 255 pages are left, so 256 TCBs do not fit.
    assert_eq!(
        space.decode_retype(untyped, ObjectType::Tcb as u64, 0, root, 6, 256 - 6 + 6).map(|_| ()),
        Err(InvocationError::RangeError { min: 0, max: 63 })
    );
    let too_big = space.decode_retype(untyped, ObjectType::Untyped as u64, 20, root, 6, 1);
    assert_eq!(too_big, Err(InvocationError::NotEnoughMemory { available: (1 << 20) - 0x2000 }));
    check_invariants(&space);
    finish(&mut space, 2, |s, b| s.revoke(untyped, b));
    let again =
        space.decode_retype(untyped, ObjectType::Untyped as u64, 20, root, 6, 1).expect("whole region free");
    assert!(again.reset);
    assert_eq!(again.first_object, UNTYPED_BASE);
}

#[test]
fn deleting_cnode_cycles_and_self_containment_terminates_cleanly() {
    let mut space = boot();
    let root = root_cap();
    let untyped = Slot::in_cnode(ROOT_CNODE, 1);
    // Two CNodes A (slot 2) and B (slot 3), radix 2.
    let retype = space.decode_retype(untyped, ObjectType::CNode as u64, 2, root, 2, 2).expect("room");
    space.perform_retype(&retype);
    let (a, b) = (space.cap(Slot::in_cnode(ROOT_CNODE, 2)), space.cap(Slot::in_cnode(ROOT_CNODE, 3)));
    let (Capability::CNode { object: a_obj, .. }, Capability::CNode { object: b_obj, .. }) = (a, b) else {
        panic!()
    };
    // Move A's only cap into B, and B's only cap into A: a cycle; A also gets a cap to itself via a copy.
    let mv = |space: &mut ObjectSpace<Arena>, from: Slot, to: Slot| {
        let cap = space.cap(from);
        space.move_cap(from, to, cap);
    };
    mv(&mut space, Slot::in_cnode(ROOT_CNODE, 2), Slot::in_cnode(b_obj, 3));
    // Keep a way in to B before hiding its cap in A: a copy at root slot 4.
    space.insert_derived(Slot::in_cnode(ROOT_CNODE, 3), Slot::in_cnode(ROOT_CNODE, 4), b);
    mv(&mut space, Slot::in_cnode(ROOT_CNODE, 3), Slot::in_cnode(a_obj, 1));
    space.insert_derived(Slot::in_cnode(b_obj, 3), Slot::in_cnode(a_obj, 2), a);
    check_invariants(&space);
    // Delete the last outside cap to B: B is not final (A holds one), so it just goes.
    finish(&mut space, 1, |s, b| s.delete(Slot::in_cnode(ROOT_CNODE, 4), b));
    check_invariants(&space);
    // Now only the Untyped can reach the cycle: revoking it must destroy both.
    finish(&mut space, 1, |s, b| s.revoke(untyped, b));
    check_invariants(&space);
    assert!(!space.has_children(untyped));
}
