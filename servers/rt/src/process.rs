//! Child processes from ELF images: a parent (the root task, or any task
//! with Untyped memory and an ASID pool) builds a new CSpace, address space
//! and thread, loads the image, and starts it.
//!
//! Everything a child is made of comes from one Untyped, its *memory*, so
//! ending a child is revoking that Untyped: every object made from it (and
//! every capability to those, in any CSpace) goes, and the memory can be
//! used again, for instance to restart the child.
//!
//! A child is laid out as the kernel lays out the root task
//! (`abi::bootinfo::layout`): image from 4 MiB, stack below
//! `STACK_TOP`, IPC buffer and boot-info page, RDI = boot-info address. Its
//! CNode has `2^CHILD_CNODE_RADIX` slots, guarded so that slot numbers are
//! capability pointers, holding (`abi::bootinfo::slot`): its CNode,
//! address space and thread, its IPC buffer and boot-info frames, `PARENT`
//! (an endpoint to the parent, badged) and `FAULT_HANDLER` (the same with
//! `parent::FAULT_BADGE`), and, if it was given memory, one Untyped.

use core::fmt;

use strata_abi::bootinfo::{self, BootInfo, ModuleDescriptor, SlotRange, UntypedDescriptor, layout, slot};
use strata_abi::elf::{self, ElfError};
use strata_abi::error::InvocationError;
use strata_abi::object::{ObjectType, Rights};

use crate::cap::{AsidPool, CNode, Cap, Frame, Pml4, Registers, Tcb, Untyped, own};
use crate::root::DEPTH;
use crate::{CPtr, parent, slots, sys};

/// Radix of a child's CNode.
pub const CHILD_CNODE_RADIX: u8 = 8;
/// Most runs of consecutive parent slots one child's objects take (slots
/// are handed out lowest first, so a child's are mostly consecutive).
pub const MAX_SLOT_RUNS: usize = 64;

/// What to start.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    /// The ELF executable.
    pub image: &'a [u8],
    /// Everything the child is made of comes from this Untyped (in the
    /// parent's CSpace). It should have nothing made from it yet.
    pub memory: Cap<Untyped>,
    /// Of which the child gets an Untyped of this many bits for its own use
    /// (`None`: none).
    pub child_memory_bits: Option<u8>,
    /// Its priority (at most the parent's maximum controlled priority).
    pub priority: u8,
    /// The parent's endpoint, which the child reaches as `PARENT` and, for
    /// faults, `FAULT_HANDLER`.
    pub parent_endpoint: CPtr,
    /// The badge the parent knows the child by (below `FAULT_BADGE`).
    pub badge: u64,
    /// Where the parent's ASIDs come from.
    pub asid_pool: Cap<AsidPool>,
    /// Boot modules of this task the child may read, by index in this
    /// task's module list: mapped read-only into the child and listed in
    /// its boot-info page, with copies of their frame capabilities.
    pub modules: &'a [usize],
    /// What else the child gets, each copied into its own slot: an ASID
    /// pool for its guests' GuestSpaces (`slot::ASID_POOL`), I/O ports
    /// (`slot::IO_PORTS`) and an IRQ handler (`slot::IRQ`).
    pub grants: Grants,
}

/// Capabilities (in the parent's CSpace) a child gets copies of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grants {
    /// An ASID pool of its own, for GuestSpaces.
    pub asid_pool: Option<Cap<AsidPool>>,
    /// An I/O-port capability.
    pub io_ports: Option<CPtr>,
    /// An IRQ handler capability.
    pub irq: Option<CPtr>,
}

/// Why a child could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    /// The image is not an acceptable executable.
    Elf(ElfError),
    /// An invocation failed (most often: its memory is too small).
    Invocation(&'static str, InvocationError),
    /// The parent's CSpace is too fragmented to record the child's slots.
    TooLarge,
    /// The modules it is to read take more frames than its CNode has slots.
    ModulesTooLarge {
        /// Frames needed.
        frames: u64,
    },
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Elf(e) => write!(f, "not a loadable executable: {e}"),
            Self::Invocation(step, e) => write!(f, "{step} failed: {e}"),
            Self::TooLarge => {
                write!(f, "its objects are spread over more than {MAX_SLOT_RUNS} runs of slots")
            }
            Self::ModulesTooLarge { frames } => write!(
                f,
                "its modules take {frames} frames, more than the free slots of its {}-slot CNode",
                1 << CHILD_CNODE_RADIX
            ),
        }
    }
}

/// A running (or stopped) child.
#[derive(Debug)]
pub struct Process {
    /// Its thread.
    pub tcb: Cap<Tcb>,
    /// Where it was loaded from: entry point and image pages.
    pub entry: u64,
    /// Pages of its image.
    pub image_pages: u64,
    memory: Cap<Untyped>,
    /// The parent's slots holding capabilities to the child's objects.
    slots: SlotRuns,
}

/// A set of slots, as runs of consecutive ones.
#[derive(Debug, Default)]
struct SlotRuns(heapless::Vec<core::ops::Range<CPtr>, MAX_SLOT_RUNS>);

impl SlotRuns {
    fn add(&mut self, slot: CPtr) -> Result<(), SpawnError> {
        if let Some(last) = self.0.last_mut()
            && last.end == slot
        {
            last.end += 1;
            return Ok(());
        }
        self.0.push(slot..slot + 1).map_err(|_| SpawnError::TooLarge)
    }

    /// Gives every slot back to the allocator.
    fn free(&self) {
        for run in &self.0 {
            run.clone().for_each(slots::free);
        }
    }
}

impl Process {
    /// Stops the child and deletes everything it is made of. Returns its
    /// memory, reset, for reuse (a restart, say).
    pub fn destroy(self) -> Result<Cap<Untyped>, InvocationError> {
        let _ = self.tcb.suspend();
        self.memory.reset()?;
        self.slots.free();
        Ok(self.memory)
    }
}

/// Creates the child from `spec` and starts it. On failure everything made
/// so far is deleted again (the memory is reset).
pub fn spawn(spec: &Spec<'_>) -> Result<Process, SpawnError> {
    let plan = elf::plan(spec.image, layout::IMAGE_START..layout::IMAGE_END).map_err(SpawnError::Elf)?;
    let mut builder =
        Builder { memory: spec.memory, slots: SlotRuns::default(), tables: heapless::Vec::new() };
    match builder.build(spec, &plan) {
        Ok(tcb) => Ok(Process {
            tcb,
            entry: plan.entry,
            image_pages: plan.image_size() / 4096,
            memory: spec.memory,
            slots: builder.slots,
        }),
        Err(error) => {
            let _ = spec.memory.reset();
            builder.slots.free();
            Err(error)
        }
    }
}

struct Builder {
    memory: Cap<Untyped>,
    slots: SlotRuns,
    /// Paging structures made: (object type, address >> the bits one covers).
    tables: heapless::Vec<(u64, u64), 64>,
}

fn step<T>(what: &'static str, result: Result<T, InvocationError>) -> Result<T, SpawnError> {
    result.map_err(|e| SpawnError::Invocation(what, e))
}

impl Builder {
    fn make(&mut self, kind: ObjectType, size: u64, what: &'static str) -> Result<CPtr, SpawnError> {
        let slot = step(what, self.memory.retype_type(kind, size))?;
        self.keep(slot)?;
        Ok(slot)
    }

    fn keep(&mut self, slot: CPtr) -> Result<(), SpawnError> {
        self.slots.add(slot).inspect_err(|_| slots::free(slot))
    }

    fn frame(&mut self, what: &'static str) -> Result<Cap<Frame>, SpawnError> {
        self.make(ObjectType::Frame4K, 0, what).map(Cap::from_raw)
    }

    /// The PDPT, page directory and page table `address` needs in `vspace`.
    fn tables_for(&mut self, vspace: Cap<Pml4>, address: u64) -> Result<(), SpawnError> {
        for (kind, shift) in
            [(ObjectType::Pdpt, 39), (ObjectType::PageDirectory, 30), (ObjectType::PageTable, 21)]
        {
            let region = (kind as u64, address >> shift);
            if self.tables.contains(&region) {
                continue;
            }
            let table = self.make(kind, 0, "making a page table")?;
            step("mapping a page table", Cap::<crate::cap::PageTable>::from_raw(table).map(vspace, address))?;
            self.tables.push(region).map_err(|_| SpawnError::TooLarge)?;
        }
        Ok(())
    }

    /// A frame with `bytes`, mapped at `address` in the child.
    fn page(
        &mut self,
        vspace: Cap<Pml4>,
        address: u64,
        bytes: Option<&[u8; 4096]>,
        rights: Rights,
        attributes: u64,
    ) -> Result<Cap<Frame>, SpawnError> {
        self.tables_for(vspace, address)?;
        let frame = self.frame("making a frame")?;
        if let Some(bytes) = bytes {
            step("filling a frame", sys::fill_frame(frame.raw(), bytes))?;
        }
        step("mapping a frame", frame.map(vspace, address, rights, attributes))?;
        Ok(frame)
    }

    /// Maps a read-only copy of the parent's frame `frame` at `address` in
    /// the child and moves it into the child's CNode at `to`, where it goes
    /// with the child.
    fn share_frame(
        &mut self,
        vspace: Cap<Pml4>,
        address: u64,
        frame: CPtr,
        (cnode, index): (Cap<CNode>, u64),
    ) -> Result<(), SpawnError> {
        self.tables_for(vspace, address)?;
        let copy = step("copying a module frame", crate::root::mint(frame, Rights::READ, 0))?;
        let mapped = Cap::<Frame>::from_raw(copy).map(vspace, address, Rights::READ, 0);
        let moved = mapped.and_then(|()| cnode.move_from(index, u64::from(CHILD_CNODE_RADIX), copy));
        if moved.is_err() {
            let _ = own::CNODE.delete(copy, DEPTH);
        }
        slots::free(copy);
        step("sharing a module frame", moved)
    }

    fn build(&mut self, spec: &Spec<'_>, plan: &elf::LoadPlan) -> Result<Cap<Tcb>, SpawnError> {
        let vspace: Cap<Pml4> = Cap::from_raw(self.make(ObjectType::Pml4, 0, "making the address space")?);
        step("assigning an ASID", spec.asid_pool.assign(vspace))?;
        let cnode: Cap<CNode> =
            Cap::from_raw(self.make(ObjectType::CNode, u64::from(CHILD_CNODE_RADIX), "making the CNode")?);
        let tcb: Cap<Tcb> = Cap::from_raw(self.make(ObjectType::Tcb, 0, "making the thread")?);

        // The image, page by page, with its segments' permissions.
        for page in (plan.virtual_base..plan.virtual_end).step_by(4096) {
            let (rights, attributes) = plan.page_permissions(page);
            self.page(vspace, page, Some(&plan.page_bytes(spec.image, page)), rights, attributes.bits())?;
        }
        for n in 0..layout::STACK_PAGES {
            let address = layout::STACK_TOP - (n + 1) * 4096;
            self.page(vspace, address, None, Rights::READ | Rights::WRITE, 0)?;
        }
        let buffer = self.page(vspace, layout::IPC_BUFFER_ADDRESS, None, Rights::READ | Rights::WRITE, 0)?;

        // Its CNode: itself (guarded: slot numbers are pointers), its
        // objects, its way to the parent, and its memory.
        let depth = u64::from(CHILD_CNODE_RADIX);
        let guard = 64 - depth;
        let guarded = crate::root::fresh_slot();
        self.keep(guarded)?;
        step("guarding the CNode", own::CNODE.mint(guarded, DEPTH, cnode.raw(), Rights::all(), guard))?;
        step("installing the CNode", cnode.copy(slot::CNODE, depth, guarded))?;
        step("installing the address space", cnode.copy(slot::VSPACE, depth, vspace.raw()))?;
        step("installing the thread", cnode.copy(slot::TCB, depth, tcb.raw()))?;
        let to_parent = Rights::WRITE | Rights::GRANT_REPLY;
        step(
            "giving the parent endpoint",
            cnode.mint(slot::PARENT, depth, spec.parent_endpoint, to_parent, spec.badge),
        )?;
        let fault_badge = spec.badge | parent::FAULT_BADGE;
        step(
            "giving the fault endpoint",
            cnode.mint(slot::FAULT_HANDLER, depth, spec.parent_endpoint, to_parent, fault_badge),
        )?;
        for (grant, child_slot) in [
            (spec.grants.asid_pool.map(Cap::raw), slot::ASID_POOL),
            (spec.grants.io_ports, slot::IO_PORTS),
            (spec.grants.irq, slot::IRQ),
        ] {
            if let Some(grant) = grant {
                step("giving a granted capability", cnode.copy(child_slot, depth, grant))?;
            }
        }
        let mut modules = [ModuleDescriptor::default(); bootinfo::MAX_MODULES];
        // The modules' frame capabilities follow its own Untyped's slot.
        let untyped_count = u64::from(spec.child_memory_bits.is_some());
        let mut next_slot = slot::FIRST_VARIABLE + untyped_count;
        let mut address = layout::MODULES_ADDRESS;
        for (&index, described) in spec.modules.iter().zip(&mut modules) {
            let Some((descriptor, _)) = sys::module(index) else { continue };
            let frames = descriptor.frames.end - descriptor.frames.start;
            if next_slot + frames > 1 << CHILD_CNODE_RADIX {
                return Err(SpawnError::ModulesTooLarge { frames });
            }
            *described = ModuleDescriptor {
                address,
                frames: SlotRange { start: next_slot, end: next_slot + frames },
                ..*descriptor
            };
            for frame in descriptor.frames.start..descriptor.frames.end {
                self.share_frame(vspace, address, frame, (cnode, next_slot))?;
                (address, next_slot) = (address + 4096, next_slot + 1);
            }
        }

        let mut untypeds = [UntypedDescriptor::default(); bootinfo::MAX_UNTYPEDS];
        if let Some(bits) = spec.child_memory_bits {
            // Physical addresses of Untypeds made by retype are not known here.
            untypeds[0] =
                UntypedDescriptor { physical_address: 0, size_bits: bits, device: 0, reserved: [0; 6] };
        }
        // The boot-info page.
        let info = BootInfo {
            magic: bootinfo::MAGIC,
            version: bootinfo::VERSION,
            first_free_slot: next_slot,
            ipc_buffer_address: layout::IPC_BUFFER_ADDRESS,
            image_frames: SlotRange::default(),
            untyped_slots: SlotRange {
                start: slot::FIRST_VARIABLE,
                end: slot::FIRST_VARIABLE + untyped_count,
            },
            untyped_count,
            module_count: spec.modules.len().min(bootinfo::MAX_MODULES) as u64,
            cnode_radix: depth,
            reserved: [0; 5],
            untypeds,
            modules,
        };
        let mut page = [0u8; 4096];
        let bytes = zerocopy::IntoBytes::as_bytes(&info);
        page[..bytes.len()].copy_from_slice(bytes);
        self.page(vspace, layout::BOOT_INFO_ADDRESS, Some(&page), Rights::READ, 0)?;

        // Last: its own memory, which takes the (aligned) rest of `memory`.
        if let Some(bits) = spec.child_memory_bits {
            let untyped = self.make(ObjectType::Untyped, u64::from(bits), "making the child's memory")?;
            step("giving the child its memory", cnode.move_from(slot::FIRST_VARIABLE, depth, untyped))?;
        }

        // The thread.
        step(
            "configuring the thread",
            tcb.configure(
                Cap::from_raw(guarded),
                vspace,
                Some((buffer, layout::IPC_BUFFER_ADDRESS)),
                slot::FAULT_HANDLER,
            ),
        )?;
        step("setting the priority", tcb.set_priority(spec.priority, spec.priority, own::TCB))?;
        let mut registers =
            Registers { rip: plan.entry, rsp: layout::STACK_TOP, rflags: 0x202, ..Registers::default() };
        registers.general[Registers::RDI] = layout::BOOT_INFO_ADDRESS;
        step("setting the registers", tcb.write_registers(&registers))?;
        step("starting the thread", tcb.resume())?;
        Ok(tcb)
    }
}
