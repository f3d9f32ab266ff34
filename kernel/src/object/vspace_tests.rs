//! Tests of address-space objects: a scenario through every invocation and
//! error, and a property test of the safety invariant that every present
//! user mapping in every live address space belongs to a capability that
//! records exactly that mapping (so deleting the capability removes it, and
//! freed memory can never stay mapped into user space).

use std::collections::HashSet;

use proptest::prelude::*;
use strata_abi::error::{InvocationError, LookupFailure};
use strata_abi::invocation::Label;
use strata_abi::object::{ObjectType, Rights, USER_TOP, VmAttributes};

use super::cap::{FrameSize, Mapping, TableLevel};
use super::delete::Budget;
use super::memory::Arena;
use super::model::{
    ASID_CONTROL, POOL, UNTYPED, boot_with_pool, check_invariants, finish, invoke, retype, root_cap, scan,
    slot,
};
use super::vspace::VSpaceInvocation;
use super::*;
use crate::arch::x86_64::paging::{Level, PageTableEntry, PteFlags};

/// Where `address` leads in the address space rooted at `pml4`.
fn translate(space: &ObjectSpace<Arena>, pml4: PhysAddr, address: u64) -> Option<(u64, PteFlags)> {
    let mut table = pml4.get();
    let mut level = Level::Pml4;
    loop {
        let entry =
            PageTableEntry::from_raw(space.memory.read(PhysAddr(table + 8 * level.index_of(address) as u64)));
        if !entry.is_present() {
            return None;
        }
        if level == Level::Pt || entry.flags().contains(PteFlags::HUGE) {
            return Some((entry.address() + (address & (level.entry_span() - 1)), entry.flags()));
        }
        table = entry.address();
        level = level.next()?;
    }
}

const PML4: u64 = 8;
const PDPT: u64 = 9;
const PD: u64 = 10;
const PT: u64 = 11;
const FRAME: u64 = 12;
const FRAME2: u64 = 13;

/// An address space with all levels installed for `ADDRESS`.
const ADDRESS: u64 = 0x0000_1234_5678_9000;

fn mapped_space() -> ObjectSpace<Arena> {
    space_with_tables_at(ADDRESS)
}

/// A PML4 with an ASID and a PDPT, page directory and page table installed
/// for `address`, and two unmapped frames.
fn space_with_tables_at(address: u64) -> ObjectSpace<Arena> {
    let mut space = boot_with_pool();
    retype(&mut space, ObjectType::Pml4, 0, PML4, 1);
    retype(&mut space, ObjectType::Pdpt, 0, PDPT, 1);
    retype(&mut space, ObjectType::PageDirectory, 0, PD, 1);
    retype(&mut space, ObjectType::PageTable, 0, PT, 1);
    retype(&mut space, ObjectType::Frame4K, 0, FRAME, 2);
    invoke(&mut space, POOL, Label::AsidPoolAssign, &[], &[PML4]).expect("assign");
    for table in [PDPT, PD, PT] {
        invoke(&mut space, table, Label::PageTableMap, &[address], &[PML4]).expect("map table");
    }
    space
}

fn object(space: &ObjectSpace<Arena>, index: u64) -> PhysAddr {
    space.cap(slot(index)).region().expect("an object").0
}

#[test]
fn frames_map_translate_and_unmap_through_all_four_levels() {
    let mut space = mapped_space();
    let Capability::Pml4 { object: pml4, asid: Some(asid) } = space.cap(slot(PML4)) else {
        panic!("assigned")
    };
    assert_eq!(asid, 1, "ASID 0 is never handed out");
    let rw = (Rights::READ | Rights::WRITE).bits();
    invoke(&mut space, FRAME, Label::FrameMap, &[ADDRESS, rw, 0], &[PML4]).expect("map");
    let (physical, flags) = translate(&space, pml4, ADDRESS + 0x123).expect("mapped");
    assert_eq!(physical, object(&space, FRAME).get() + 0x123);
    assert!(flags.contains(PteFlags::USER | PteFlags::WRITABLE | PteFlags::NO_EXECUTE));
    assert_eq!(
        space.cap(slot(FRAME)),
        Capability::Frame {
            object: object(&space, FRAME),
            size: FrameSize::Small,
            rights: Rights::READ | Rights::WRITE,
            device: false,
            mapping: Some(Mapping { asid, address: ADDRESS }),
        }
    );
    // Remapping in place changes rights; executable read-only is allowed.
    let read = Rights::READ.bits();
    invoke(&mut space, FRAME, Label::FrameMap, &[ADDRESS, read, VmAttributes::EXECUTABLE.bits()], &[PML4])
        .expect("remap");
    let (_, flags) = translate(&space, pml4, ADDRESS).expect("mapped");
    assert!(!flags.contains(PteFlags::WRITABLE) && !flags.contains(PteFlags::NO_EXECUTE));
    // The frame's address is readable.
    assert_eq!(
        space.decode_vspace(slot(FRAME), Label::FrameGetAddress, &[], &[]),
        Ok(VSpaceInvocation::GetAddress { address: object(&space, FRAME) })
    );
    invoke(&mut space, FRAME, Label::FrameUnmap, &[], &[]).expect("unmap");
    assert_eq!(translate(&space, pml4, ADDRESS), None);
    assert!(space.memory.flushes.contains(&(asid, ADDRESS)), "unmapping flushes the TLB entry");
    check_invariants(&space);
}

#[test]
fn every_mapping_error_is_reported() {
    let mut space = mapped_space();
    let rw = (Rights::READ | Rights::WRITE).bits();
    let map = |space: &mut ObjectSpace<Arena>, frame: u64, address: u64, rights: u64, attributes: u64| {
        invoke(space, frame, Label::FrameMap, &[address, rights, attributes], &[PML4])
    };
    assert_eq!(map(&mut space, FRAME, ADDRESS + 8, rw, 0), Err(InvocationError::AlignmentError));
    assert_eq!(map(&mut space, FRAME, USER_TOP, rw, 0), Err(InvocationError::InvalidArgument { index: 0 }));
    assert_eq!(
        map(&mut space, FRAME, ADDRESS, rw, VmAttributes::EXECUTABLE.bits()),
        Err(InvocationError::InvalidArgument { index: 2 }),
        "writable and executable at once"
    );
    assert_eq!(
        map(&mut space, FRAME, ADDRESS, Rights::WRITE.bits(), 0),
        Err(InvocationError::InvalidArgument { index: 1 })
    );
    assert_eq!(
        map(&mut space, FRAME, ADDRESS, rw, 1 << 9),
        Err(InvocationError::InvalidArgument { index: 2 })
    );
    assert_eq!(
        map(&mut space, FRAME, ADDRESS ^ (1 << 30), rw, 0),
        Err(InvocationError::FailedLookup {
            source: false,
            failure: LookupFailure::MissingCapability { bits_left: 30 }
        }),
        "no page directory for that gigabyte"
    );
    map(&mut space, FRAME, ADDRESS, rw, 0).expect("map");
    assert_eq!(map(&mut space, FRAME2, ADDRESS, rw, 0), Err(InvocationError::DeleteFirst));
    assert_eq!(
        map(&mut space, FRAME, ADDRESS + 0x1000, rw, 0),
        Err(InvocationError::InvalidArgument { index: 0 })
    );
    // Tables: already mapped; slot in the parent occupied; no address space.
    assert_eq!(
        invoke(&mut space, PT, Label::PageTableMap, &[ADDRESS], &[PML4]),
        Err(InvocationError::InvalidCapability { index: 0 })
    );
    retype(&mut space, ObjectType::PageTable, 0, 14, 1);
    assert_eq!(
        invoke(&mut space, 14, Label::PageTableMap, &[ADDRESS], &[PML4]),
        Err(InvocationError::DeleteFirst)
    );
    retype(&mut space, ObjectType::Pml4, 0, 15, 1);
    assert_eq!(
        invoke(&mut space, 14, Label::PageTableMap, &[0], &[15]),
        Err(InvocationError::InvalidCapability { index: 1 }),
        "a PML4 without an ASID is no address space"
    );
    // Unmapped tables and unassigned PML4s cannot be copied.
    let copy = |space: &ObjectSpace<Arena>, from: u64| {
        space.decode_cnode(root_cap(), Label::CNodeCopy, &[20, 6, from, 6, 15], Some(root_cap()))
    };
    assert_eq!(copy(&space, 14), Err(InvocationError::IllegalOperation));
    assert_eq!(copy(&space, 15), Err(InvocationError::IllegalOperation));
    assert!(copy(&space, PT).is_ok());
    // A page-table copy exists: the mapping cannot be undone through one of them.
    let copy_pt = space
        .decode_cnode(root_cap(), Label::CNodeCopy, &[20, 6, PT, 6, 15], Some(root_cap()))
        .expect("copy");
    let _ = space.perform_cnode(copy_pt, &mut Budget(1));
    assert_eq!(invoke(&mut space, PT, Label::PageTableUnmap, &[], &[]), Err(InvocationError::RevokeFirst));
    check_invariants(&space);
}

#[test]
fn deleting_capabilities_removes_exactly_their_mappings() {
    let mut space = mapped_space();
    let Capability::Pml4 { object: pml4, .. } = space.cap(slot(PML4)) else { panic!() };
    let rw = (Rights::READ | Rights::WRITE).bits();
    // A copy of a frame is unmapped and can be mapped elsewhere; deleting
    // the original removes only the original's mapping.
    let copy = space
        .decode_cnode(root_cap(), Label::CNodeCopy, &[20, 6, FRAME, 6, 15], Some(root_cap()))
        .expect("copy");
    let _ = space.perform_cnode(copy, &mut Budget(1));
    assert!(matches!(space.cap(slot(20)), Capability::Frame { mapping: None, .. }));
    invoke(&mut space, FRAME, Label::FrameMap, &[ADDRESS, rw, 0], &[PML4]).expect("map");
    invoke(&mut space, 20, Label::FrameMap, &[ADDRESS + 0x1000, rw, 0], &[PML4]).expect("map copy");
    finish(&mut space, 1, |s, b| s.delete(slot(FRAME), b));
    assert_eq!(translate(&space, pml4, ADDRESS), None);
    assert_eq!(translate(&space, pml4, ADDRESS + 0x1000).map(|t| t.0), Some(object(&space, 20).get()));
    // Deleting the page table unmaps it from its directory; the frame
    // capability still records its mapping, and unmapping it later must not
    // write into the (dead) page table.
    let pt = object(&space, PT);
    finish(&mut space, 1, |s, b| s.delete(slot(PT), b));
    assert_eq!(translate(&space, pml4, ADDRESS + 0x1000), None);
    let stale_pte = pt.offset(8 * Level::Pt.index_of(ADDRESS + 0x1000) as u64);
    let before = space.memory.read(stale_pte);
    invoke(&mut space, 20, Label::FrameUnmap, &[], &[]).expect("unmap");
    assert_eq!(space.memory.read(stale_pte), before, "unmapping through a deleted table wrote to it");
    // Deleting the PML4 frees its ASID: stale mappings find no address space.
    finish(&mut space, 1, |s, b| s.delete(slot(PML4), b));
    assert_eq!(space.pml4_of(1), None);
    retype(&mut space, ObjectType::Pml4, 0, 21, 1);
    invoke(&mut space, POOL, Label::AsidPoolAssign, &[], &[21]).expect("the ASID is free again");
    assert!(matches!(space.cap(slot(21)), Capability::Pml4 { asid: Some(1), .. }));
    check_invariants(&space);
}

#[test]
fn large_frames_map_in_page_directories() {
    let mut space = ObjectSpace::new(Arena::new(0, 8 << 20));
    space.insert_root(slot(0), root_cap());
    space.insert_root(
        slot(UNTYPED),
        Capability::Untyped { base: PhysAddr(0x40_0000), size_bits: 22, free_index: 0, device: false },
    );
    space.insert_root(slot(ASID_CONTROL), Capability::AsidControl);
    retype(&mut space, ObjectType::Frame2M, 0, FRAME, 1);
    retype(&mut space, ObjectType::Untyped, 12, 3, 1);
    invoke(&mut space, ASID_CONTROL, Label::AsidControlMakePool, &[POOL, 6], &[3, 0]).expect("pool");
    retype(&mut space, ObjectType::Pml4, 0, PML4, 1);
    retype(&mut space, ObjectType::Pdpt, 0, PDPT, 1);
    retype(&mut space, ObjectType::PageDirectory, 0, PD, 1);
    invoke(&mut space, POOL, Label::AsidPoolAssign, &[], &[PML4]).expect("assign");
    let address = 0x7f00_0020_0000;
    for table in [PDPT, PD] {
        invoke(&mut space, table, Label::PageTableMap, &[address], &[PML4]).expect("map table");
    }
    let rw = (Rights::READ | Rights::WRITE).bits();
    assert_eq!(
        invoke(&mut space, FRAME, Label::FrameMap, &[address + 0x1000, rw, 0], &[PML4]),
        Err(InvocationError::AlignmentError)
    );
    invoke(&mut space, FRAME, Label::FrameMap, &[address, rw, 0], &[PML4]).expect("map 2 MiB");
    let Capability::Pml4 { object: pml4, .. } = space.cap(slot(PML4)) else { panic!() };
    let (physical, flags) = translate(&space, pml4, address + 0x12_3456).expect("mapped");
    assert_eq!(physical, object(&space, FRAME).get() + 0x12_3456);
    assert!(flags.contains(PteFlags::HUGE));
    check_invariants(&space);
}

#[test]
fn new_address_spaces_share_the_kernel_half() {
    let mut space = boot_with_pool();
    // A fake kernel PML4 with a few upper-half entries.
    let kernel = PhysAddr(0x3f_0000);
    space.memory.write(kernel.offset(8 * 256), 0x1234_5003);
    space.memory.write(kernel.offset(8 * 511), 0x5678_9003);
    space.memory.write(kernel.offset(8 * 10), 0xdead_0003); // lower half: not copied
    space.kernel_pml4 = Some(kernel);
    retype(&mut space, ObjectType::Pml4, 0, PML4, 1);
    let pml4 = object(&space, PML4);
    assert_eq!(space.memory.read(pml4.offset(8 * 256)), 0x1234_5003);
    assert_eq!(space.memory.read(pml4.offset(8 * 511)), 0x5678_9003);
    assert_eq!(space.memory.read(pml4.offset(8 * 10)), 0);
}

/// Every present user-half entry of every live address space is owned by
/// a capability recording exactly that mapping.
fn check_mappings(space: &ObjectSpace<Arena>) {
    let (_, entries) = scan(space);
    let caps: Vec<Capability> = entries.iter().map(|&s| space.cap(s)).collect();
    for asid in 1..4096u16 {
        let Some(pml4) = space.pml4_of(asid) else { continue };
        assert!(
            caps.iter().any(
                |c| matches!(c, Capability::Pml4 { object, asid: Some(a) } if *object == pml4 && *a == asid)
            ),
            "ASID {asid} names a PML4 no capability holds"
        );
        walk(space, &caps, asid, pml4.get(), Level::Pml4, 0);
    }
}

fn walk(space: &ObjectSpace<Arena>, caps: &[Capability], asid: u16, table: u64, level: Level, base: u64) {
    let entries = if level == Level::Pml4 { 256 } else { 512 };
    for index in 0..entries {
        let entry = PageTableEntry::from_raw(space.memory.read(PhysAddr(table + 8 * index)));
        if !entry.is_present() {
            continue;
        }
        let address = base + index * level.entry_span();
        let leaf = level == Level::Pt || entry.flags().contains(PteFlags::HUGE);
        let owner = caps.iter().any(|c| match *c {
            Capability::Frame { object, mapping: Some(m), .. } if leaf => {
                object.get() == entry.address() && m == Mapping { asid, address }
            }
            Capability::PageTable { object, level: l, mapping: Some(m) } if !leaf => {
                let expected = match level {
                    Level::Pml4 => TableLevel::Pdpt,
                    Level::Pdpt => TableLevel::PageDirectory,
                    _ => TableLevel::PageTable,
                };
                object.get() == entry.address() && l == expected && m == Mapping { asid, address }
            }
            _ => false,
        });
        assert!(
            owner,
            "entry {index} at level {level:?} of ASID {asid} ({:#x}) has no owning capability",
            entry.raw()
        );
        if !leaf {
            walk(space, caps, asid, entry.address(), level.next().expect("not a leaf"), address);
        }
    }
}

#[derive(Debug, Clone)]
enum VmOp {
    Create { kind: u8, slot: u8 },
    Assign { pml4: u8 },
    MapTable { table: u8, vspace: u8, address: u8 },
    MapFrame { frame: u8, vspace: u8, address: u8, writable: bool },
    Unmap { cap: u8 },
    Copy { from: u8, to: u8 },
    Delete { slot: u8, budget: u8 },
    RevokeUntyped,
}

fn any_vm_op() -> impl Strategy<Value = VmOp> {
    prop_oneof![
        15 => (0u8..6, any::<u8>()).prop_map(|(kind, slot)| VmOp::Create { kind, slot }),
        5 => any::<u8>().prop_map(|pml4| VmOp::Assign { pml4 }),
        20 => (any::<u8>(), any::<u8>(), 0u8..16).prop_map(|(table, vspace, address)| VmOp::MapTable { table, vspace, address }),
        20 => (any::<u8>(), any::<u8>(), 0u8..16, any::<bool>())
            .prop_map(|(frame, vspace, address, writable)| VmOp::MapFrame { frame, vspace, address, writable }),
        5 => any::<u8>().prop_map(|cap| VmOp::Unmap { cap }),
        5 => (any::<u8>(), any::<u8>()).prop_map(|(from, to)| VmOp::Copy { from, to }),
        8 => (any::<u8>(), 1u8..4).prop_map(|(slot, budget)| VmOp::Delete { slot, budget }),
        // Rare: it ends the interesting part of a sequence.
        1 => Just(VmOp::RevokeUntyped),
    ]
}

/// An address space with a full chain of tables at address 0 and two
/// unmapped frames: random operations then build on it, tear it down and
/// rebuild (a chain of six dependent steps is too rare to arise by chance).
fn prepared_space() -> ObjectSpace<Arena> {
    space_with_tables_at(0)
}

/// Sixteen addresses whose tables overlap at every level.
fn address_of(n: u8) -> u64 {
    let bit = |i: u8| u64::from((n >> i) & 1);
    (bit(0) << 39) | (bit(1) << 30) | (bit(2) << 21) | (bit(3) << 12)
}

/// Root slots (8..40) whose capability satisfies `want`; `pick` chooses
/// among them (or among all slots if none does, to keep errors exercised).
fn choose(space: &ObjectSpace<Arena>, pick: u8, want: impl Fn(&Capability) -> bool) -> u64 {
    let matching: Vec<u64> = (8..40).filter(|&i| want(&space.cap(slot(i)))).collect();
    if matching.is_empty() || pick.is_multiple_of(8) {
        u64::from(8 + pick % 32)
    } else {
        matching[usize::from(pick) % matching.len()]
    }
}

/// One of the sixteen test addresses whose table at `level` exists in the
/// address space in `vspace` (chosen by `pick`), or address `pick` if none.
fn reachable_address(space: &ObjectSpace<Arena>, vspace: u64, level: Level, pick: u8) -> u64 {
    let Capability::Pml4 { object, .. } = space.cap(slot(vspace)) else { return address_of(pick) };
    let present = |address: u64| {
        let mut table = object.get();
        let mut current = Level::Pml4;
        while current != level {
            let entry = PageTableEntry::from_raw(
                space.memory.read(PhysAddr(table + 8 * current.index_of(address) as u64)),
            );
            if !entry.is_present() || entry.flags().contains(PteFlags::HUGE) {
                return false;
            }
            table = entry.address();
            current = current.next().expect("above the target level");
        }
        true
    };
    let candidates: Vec<u64> = (0..16).map(address_of).filter(|&a| present(a)).collect();
    if candidates.is_empty() || pick.is_multiple_of(5) {
        address_of(pick)
    } else {
        candidates[usize::from(pick) % candidates.len()]
    }
}

fn run_vm(space: &mut ObjectSpace<Arena>, op: &VmOp) -> Result<(), InvocationError> {
    let rw = (Rights::READ | Rights::WRITE).bits();
    let assigned = |c: &Capability| matches!(c, Capability::Pml4 { asid: Some(_), .. });
    match *op {
        VmOp::Create { kind, slot: at } => {
            let kind = [
                ObjectType::Pml4,
                ObjectType::Pdpt,
                ObjectType::PageDirectory,
                ObjectType::PageTable,
                ObjectType::Frame4K,
                ObjectType::Frame4K,
            ][usize::from(kind)];
            let at = choose(space, at, Capability::is_null);
            space
                .decode_retype(slot(UNTYPED), kind as u64, 0, root_cap(), at, 1)
                .map(|r| space.perform_retype(&r))
        }
        VmOp::Assign { pml4 } => {
            let pml4 = choose(space, pml4, |c| matches!(c, Capability::Pml4 { asid: None, .. }));
            invoke(space, POOL, Label::AsidPoolAssign, &[], &[pml4])
        }
        VmOp::MapTable { table, vspace, address } => {
            let table = choose(space, table, |c| matches!(c, Capability::PageTable { mapping: None, .. }));
            let vspace = choose(space, vspace, assigned);
            let parent = match space.cap(slot(table)) {
                Capability::PageTable { level: TableLevel::Pdpt, .. } => Level::Pml4,
                Capability::PageTable { level: TableLevel::PageDirectory, .. } => Level::Pdpt,
                _ => Level::Pd,
            };
            let address = reachable_address(space, vspace, parent, address);
            invoke(space, table, Label::PageTableMap, &[address], &[vspace])
        }
        VmOp::MapFrame { frame, vspace, address, writable } => {
            let frame = choose(space, frame, |c| matches!(c, Capability::Frame { .. }));
            let vspace = choose(space, vspace, assigned);
            let rights = if writable { rw } else { Rights::READ.bits() };
            let address = reachable_address(space, vspace, Level::Pt, address);
            invoke(space, frame, Label::FrameMap, &[address, rights, 0], &[vspace])
        }
        VmOp::Unmap { cap } => {
            let cap = choose(space, cap, |c| {
                matches!(
                    c,
                    Capability::Frame { mapping: Some(_), .. }
                        | Capability::PageTable { mapping: Some(_), .. }
                )
            });
            let label = match space.cap(slot(cap)) {
                Capability::Frame { .. } => Label::FrameUnmap,
                _ => Label::PageTableUnmap,
            };
            invoke(space, cap, label, &[], &[])
        }
        VmOp::Copy { from, to } => {
            let from = choose(space, from, |c| !c.is_null());
            let to = choose(space, to, Capability::is_null);
            space.decode_cnode(root_cap(), Label::CNodeCopy, &[to, 6, from, 6, 15], Some(root_cap())).map(
                |inv| {
                    let _ = space.perform_cnode(inv, &mut Budget(1));
                },
            )
        }
        VmOp::Delete { slot: at, budget } => {
            let at = choose(space, at, |c| !c.is_null());
            finish(space, u32::from(budget), |s, b| s.delete(slot(at), b));
            Ok(())
        }
        VmOp::RevokeUntyped => {
            finish(space, 3, |s, b| s.revoke(slot(UNTYPED), b));
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(super::tests::sequence_config())]

    #[test]
    fn every_present_mapping_has_an_owning_capability(ops in prop::collection::vec(any_vm_op(), 1..120)) {
        let mut space = prepared_space();
        for op in &ops {
            let _ = run_vm(&mut space, op);
            check_mappings(&space);
            check_invariants(&space);
        }
        // Revoking the Untyped leaves no address space and no mapping behind.
        finish(&mut space, 2, |s, b| s.revoke(slot(UNTYPED), b));
        let live: HashSet<u16> = (1..4096).filter(|&a| space.pml4_of(a).is_some()).collect();
        prop_assert!(live.is_empty(), "ASIDs still bound after revoke: {:?}", live);
    }
}

/// Deleting an ASID pool leaves its address spaces mapping nothing in
/// their user halves: with their ASIDs naming nothing, a mapping in them
/// could no longer be removed, and a frame deleted afterwards would stay
/// mapped (and, reused as a kernel object, writable from user space).
#[test]
fn deleting_an_asid_pool_empties_its_spaces() {
    let mut space = mapped_space();
    let rw = (Rights::READ | Rights::WRITE).bits();
    invoke(&mut space, FRAME, Label::FrameMap, &[ADDRESS, rw, 0], &[PML4]).expect("map");
    let pml4 = object(&space, PML4);
    let kernel_entry = pml4.offset(8 * 300);
    space.memory.write(kernel_entry, 0x5000 | 3);
    assert!(translate(&space, pml4, ADDRESS).is_some());
    finish(&mut space, 1, |s, b| s.delete(slot(POOL), b));
    assert_eq!(space.pml4_of(1), None, "the pool's ASIDs name nothing");
    assert_eq!(translate(&space, pml4, ADDRESS), None, "the user half is empty");
    assert_eq!(space.memory.read(kernel_entry), 0x5000 | 3, "the kernel half stays");
    assert!(space.memory.flushes.contains(&(1, u64::MAX)), "and its translations are flushed");
    // The frame can go: nothing maps it any more.
    finish(&mut space, 1, |s, b| s.delete(slot(FRAME), b));
    check_invariants(&space);
}
