//! Toolkit for a root task: allocating slots in its CNode, making objects
//! from its Untypeds, deriving capabilities, mapping frames and starting
//! threads. Capability pointers are slot numbers of the root CNode, whose
//! guard makes them resolve at full depth.

use core::sync::atomic::{AtomicU64, Ordering};

use strata_abi::bootinfo::slot;
use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::object::{ObjectType, Rights};

use crate::cap::{Cap, Registers, Tcb, Untyped};
use crate::{CPtr, boot_info, call};

/// Depth at which a root-CNode slot number resolves.
pub const DEPTH: u64 = 64;

static NEXT_UNTYPED: AtomicU64 = AtomicU64::new(0);

/// A free slot of the task's CNode (see [`crate::slots`]).
///
/// # Panics
/// If the CNode is full: the task panics, which its parent sees as a fault.
pub fn fresh_slot() -> CPtr {
    crate::slots::allocate().unwrap_or_else(|| panic!("no free slot left in this task's CNode"))
}

/// Makes one object of `kind` (with `size`: bits or radix where it
/// applies) from the root task's Untypeds, trying each in turn.
pub fn retype(kind: ObjectType, size: u64) -> Result<CPtr, InvocationError> {
    let info = boot_info();
    let mut last = InvocationError::NotEnoughMemory { available: 0 };
    for n in NEXT_UNTYPED.load(Ordering::Relaxed)..info.untyped_count {
        let untyped: Cap<Untyped> = Cap::from_raw(info.untyped_slots.start + n);
        match untyped.retype_type(kind, size) {
            Err(error @ InvocationError::NotEnoughMemory { .. }) => {
                // This Untyped is used up for good: later calls skip it.
                NEXT_UNTYPED.store(n + 1, Ordering::Relaxed);
                last = error;
            }
            result => return result,
        }
    }
    Err(last)
}

/// Copies `source` with `rights` (and, if `badge` is non-zero, that badge
/// or CNode guard) into a fresh slot.
pub fn mint(source: CPtr, rights: Rights, badge: u64) -> Result<CPtr, InvocationError> {
    let destination = fresh_slot();
    crate::cap::own::CNODE
        .mint(destination, DEPTH, source, rights, badge)
        .inspect_err(|_| crate::slots::free(destination))?;
    Ok(destination)
}

/// Maps `frame` at `address` in `vspace`.
pub fn map_frame(
    frame: CPtr,
    vspace: CPtr,
    address: u64,
    rights: Rights,
    attributes: u64,
) -> Result<(), InvocationError> {
    call(frame, Label::FrameMap, &[address, rights.bits(), attributes], &[vspace]).map(drop)
}

/// What a new thread gets.
#[derive(Debug, Clone, Copy)]
pub struct ThreadSpec {
    /// Its code.
    pub entry: extern "C" fn() -> !,
    /// Its address space (a PML4 with an ASID).
    pub vspace: CPtr,
    /// Where to map its one-page stack in that address space.
    pub stack_page: u64,
    /// Its IPC buffer: where to map a fresh frame for it (0: none).
    pub ipc_buffer: u64,
    /// Its fault endpoint (0: none).
    pub fault_endpoint: CPtr,
    /// Its priority (at most the root task's 255).
    pub priority: u64,
}

/// Creates, configures and starts a thread sharing the root CNode.
pub fn spawn(spec: ThreadSpec) -> Result<CPtr, InvocationError> {
    let read_write = Rights::READ | Rights::WRITE;
    let stack = retype(ObjectType::Frame4K, 0)?;
    map_frame(stack, spec.vspace, spec.stack_page, read_write, 0)?;
    let tcb = retype(ObjectType::Tcb, 0)?;
    if spec.ipc_buffer != 0 {
        let buffer = retype(ObjectType::Frame4K, 0)?;
        map_frame(buffer, spec.vspace, spec.ipc_buffer, read_write, 0)?;
        call(
            tcb,
            Label::TcbConfigure,
            &[spec.ipc_buffer, spec.fault_endpoint],
            &[slot::CNODE, spec.vspace, buffer],
        )?;
    } else {
        call(tcb, Label::TcbConfigure, &[0, spec.fault_endpoint], &[slot::CNODE, spec.vspace])?;
    }
    let thread: Cap<Tcb> = Cap::from_raw(tcb);
    let priority =
        u8::try_from(spec.priority).map_err(|_| InvocationError::RangeError { min: 0, max: 255 })?;
    thread.set_priority(priority, priority, crate::cap::own::TCB)?;
    thread.write_registers(&Registers {
        rip: spec.entry as usize as u64,
        rsp: spec.stack_page + 4096 - 8, // as just after a call
        rflags: 0x202,
        ..Registers::default()
    })?;
    thread.resume()?;
    Ok(tcb)
}

/// A second address space: a PML4 with an ASID from the root's pool.
pub fn address_space() -> Result<CPtr, InvocationError> {
    let pml4 = retype(ObjectType::Pml4, 0)?;
    call(slot::ASID_POOL, Label::AsidPoolAssign, &[], &[pml4])?;
    Ok(pml4)
}

/// Installs a PDPT, page directory and page table covering `address` in `vspace`.
pub fn tables_for(vspace: CPtr, address: u64) -> Result<(), InvocationError> {
    for kind in [ObjectType::Pdpt, ObjectType::PageDirectory, ObjectType::PageTable] {
        let table = retype(kind, 0)?;
        match call(table, Label::PageTableMap, &[address], &[vspace]) {
            // Already there: the new table stays unused.
            Ok(_) | Err(InvocationError::DeleteFirst) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Maps copies of the root task's image frames into `vspace` at the same
/// addresses: text read-execute, everything from `data_start` read-write.
pub fn share_image(vspace: CPtr, data_start: u64) -> Result<(), InvocationError> {
    let info = boot_info();
    for (n, frame) in (info.image_frames.start..info.image_frames.end).enumerate() {
        let address = 0x40_0000 + 0x1000 * n as u64;
        if n % 512 == 0 {
            tables_for(vspace, address)?;
        }
        let copy = mint(frame, Rights::all(), 0)?;
        if address >= data_start {
            map_frame(copy, vspace, address, Rights::READ | Rights::WRITE, 0)?;
        } else {
            map_frame(
                copy,
                vspace,
                address,
                Rights::READ,
                strata_abi::object::VmAttributes::EXECUTABLE.bits(),
            )?;
        }
    }
    Ok(())
}
