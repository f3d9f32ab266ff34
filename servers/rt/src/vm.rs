//! Running guests: VCPU and GuestSpace capabilities and `VmEnter`, in the
//! vendor-neutral terms of `strata_abi::vcpu`. The same program runs
//! unchanged on an AMD SVM host and an Intel VMX host.

use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::object::Rights;
use strata_abi::vcpu::{self, Exit, RegisterBlock};

use crate::cap::{AsidPool, Cap, Frame, GuestSpace, PageTable, Tcb, Untyped, Vcpu};
use crate::{CPtr, call, sys};

impl Cap<Vcpu> {
    /// Binds the VCPU to `thread`: that thread's [`enter`] runs it.
    pub fn set_tcb(self, thread: Cap<Tcb>) -> Result<(), InvocationError> {
        call(self.raw(), Label::VcpuSetTcb, &[], &[thread.raw()]).map(drop)
    }

    /// Gives the VCPU the guest-physical address space it runs in.
    pub fn set_space(self, space: Cap<GuestSpace>) -> Result<(), InvocationError> {
        call(self.raw(), Label::VcpuSetSpace, &[], &[space.raw()]).map(drop)
    }

    /// Reads one piece of guest state (a `vcpu::Field` id, or a segment field).
    pub fn read(self, field: u64) -> Result<u64, InvocationError> {
        call(self.raw(), Label::VcpuReadState, &[field], &[]).map(|reply| reply[0])
    }

    /// Writes up to four pieces of guest state at once; none is written
    /// unless all are valid.
    pub fn write(self, pairs: &[(u64, u64)]) -> Result<(), InvocationError> {
        let mut words = [0; 8];
        let count = pairs.len().min(4);
        for (i, &(field, value)) in pairs[..count].iter().enumerate() {
            words[2 * i] = field;
            words[2 * i + 1] = value;
        }
        call(self.raw(), Label::VcpuWriteState, &words[..2 * count], &[]).map(drop)
    }
}

impl Cap<AsidPool> {
    /// Gives `space` an ASID from this pool (a GuestSpace needs one before
    /// anything is mapped in it).
    pub fn assign_guest(self, space: Cap<GuestSpace>) -> Result<(), InvocationError> {
        call(self.raw(), Label::AsidPoolAssign, &[], &[space.raw()]).map(drop)
    }
}

impl Cap<Frame> {
    /// Maps the frame at guest-physical `address` in `space`.
    pub fn map_guest(
        self,
        space: Cap<GuestSpace>,
        address: u64,
        rights: Rights,
        attributes: u64,
    ) -> Result<(), InvocationError> {
        crate::root::map_frame(self.raw(), space.raw(), address, rights, attributes)
    }
}

impl Cap<PageTable> {
    /// Installs the table in `space` where it covers guest-physical `address`.
    pub fn map_guest(self, space: Cap<GuestSpace>, address: u64) -> Result<(), InvocationError> {
        call(self.raw(), Label::PageTableMap, &[address], &[space.raw()]).map(drop)
    }
}

/// A VM exit, as `VmEnter` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmExit {
    /// Why the guest stopped.
    pub reason: Exit,
    /// Qualification (see [`Exit`]).
    pub qualification: u64,
    /// Second qualification.
    pub qualification2: u64,
    /// The exiting instruction's length (0: decode it), or for a page-fault
    /// exception the faulting address.
    pub length: u64,
}

/// Runs the calling thread's VCPU until its next exit. With `registers`,
/// the guest's general registers, RIP and RFLAGS are set first.
pub fn enter(registers: Option<&RegisterBlock>) -> Result<VmExit, InvocationError> {
    let flags = match registers {
        Some(block) => {
            set_registers(block);
            vcpu::enter::LOAD_REGISTERS
        }
        None => 0,
    };
    enter_with(flags)
}

/// Fills the IPC buffer's register block, for [`enter_in_place`].
pub fn set_registers(block: &RegisterBlock) {
    for (index, &word) in block.iter().enumerate() {
        sys::set_vcpu_word(index, word);
    }
}

/// Runs the calling thread's VCPU until its next exit, its general
/// registers, RIP and RFLAGS set first from the register block as it is
/// in the IPC buffer: those of the last exit, with what [`set_register`]
/// changed since. Nothing is copied.
#[inline]
pub fn enter_in_place() -> Result<VmExit, InvocationError> {
    enter_with(vcpu::enter::LOAD_REGISTERS)
}

fn enter_with(flags: u64) -> Result<VmExit, InvocationError> {
    let (info, words) = sys::vm_enter(flags);
    let label = info >> 12;
    if label != 0 {
        return Err(InvocationError::decode(label, [words[0], words[1], words[2], words[3]])
            .unwrap_or(InvocationError::IllegalOperation));
    }
    let reason = Exit::try_from(words[0]).unwrap_or(Exit::Unsupported);
    Ok(VmExit { reason, qualification: words[1], qualification2: words[2], length: words[3] })
}

/// The guest's registers at the last exit (a copy of the IPC buffer's
/// register block).
pub fn registers() -> RegisterBlock {
    core::array::from_fn(sys::vcpu_word)
}

/// One of the guest's registers (a general register, RIP or RFLAGS: fields
/// 0–17) as the last exit left it in the IPC buffer's register block, or as
/// [`set_register`] changed it since. No IPC message touches the block, so
/// it stays valid across other calls until the next `VmEnter`.
///
/// # Panics
/// For a field outside the block (read those with [`Cap::<Vcpu>::read`]).
#[inline(always)]
pub fn register(field: vcpu::Field) -> u64 {
    sys::vcpu_word(field as usize)
}

/// Changes one register in the IPC buffer's register block, for
/// [`enter_in_place`] to load.
///
/// # Panics
/// For a field outside the block (write those with [`Cap::<Vcpu>::write`]).
#[inline(always)]
pub fn set_register(field: vcpu::Field, value: u64) {
    sys::set_vcpu_word(field as usize, value);
}

/// Why [`GuestRam::new`] failed: the step, and the kernel's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRamError {
    /// What was being done.
    pub step: &'static str,
    /// The error.
    pub error: InvocationError,
}

impl core::fmt::Display for GuestRamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}: {:?}", self.step, self.error)
    }
}

/// The largest RAM a guest made in [`GuestMemory`] can have: its
/// capabilities are recorded to be given back, two per 2 MiB frame.
pub const MAX_RELEASABLE_RAM: u64 = 64 << 20;

/// A 2 MiB frame.
const LARGE: u64 = 2 << 20;

/// The capabilities a guest's objects were made into: the GuestSpace, the
/// VCPU, four page tables, and two per frame of RAM.
type GuestSlots = heapless::Vec<CPtr, { 6 + 2 * (MAX_RELEASABLE_RAM / LARGE) as usize }>;

/// Where a guest's objects come from.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// The task's Untypeds, for good.
    Task,
    /// A [`GuestMemory`]'s Untypeds.
    Reusable(&'a GuestMemory),
}

impl Source<'_> {
    fn retype(self, kind: strata_abi::object::ObjectType, large: bool) -> Result<CPtr, InvocationError> {
        match self {
            Self::Task => crate::root::retype(kind, 0),
            Self::Reusable(memory) => (if large { memory.ram } else { memory.objects }).retype_type(kind, 0),
        }
    }
}

/// What a guest under construction has taken so far: the capabilities
/// made from a reusable source (bounded by its RAM size), and its window.
#[derive(Default)]
struct Parts {
    slots: GuestSlots,
    window: Option<u64>,
}

impl Parts {
    /// Notes `slot` if the guest's memory is to be given back.
    fn record(&mut self, source: Source, slot: CPtr) -> CPtr {
        if let Source::Reusable(..) = source {
            // `GuestSlots` has room for every capability of the largest RAM.
            let _ = self.slots.push(slot);
        }
        slot
    }
}

/// Memory for one guest at a time, used again for each: two Untypeds of
/// the task's own, one the guest's RAM is made from (its size) and one for
/// its VCPU, GuestSpace and page tables (64 KiB). A guest made in it with
/// [`Guest::new_in`] holds it until [`Guest::release`] resets both, which
/// deletes every object of the guest, its mappings in the GuestSpace and in
/// this task, and the capabilities to them, and hands it back.
#[derive(Debug)]
pub struct GuestMemory {
    ram: Cap<Untyped>,
    objects: Cap<Untyped>,
    ram_size: u64,
}

impl GuestMemory {
    /// Untyped memory for the small objects of a guest.
    const OBJECTS_BITS: u64 = 16;

    /// Makes the two Untypeds from the task's, for guests of `ram_size`
    /// bytes of RAM (a power of two, 2 MiB to [`MAX_RELEASABLE_RAM`]).
    pub fn new(ram_size: u64) -> Result<Self, GuestRamError> {
        use strata_abi::object::ObjectType;
        let step = |what: &'static str| move |error| GuestRamError { step: what, error };
        if !ram_size.is_power_of_two() || !(LARGE..=MAX_RELEASABLE_RAM).contains(&ram_size) {
            return Err(step("checking the size")(InvocationError::InvalidArgument { index: 0 }));
        }
        // What every guest's window needs first, while the task has memory.
        window_pdpt().map_err(step("mapping a PDPT for the window"))?;
        let untyped = |bits| {
            crate::root::retype(ObjectType::Untyped, bits)
                .map(Cap::<Untyped>::from_raw)
                .map_err(step("making guest memory"))
        };
        // The small one first: Untypeds are used from a watermark up, and
        // the large one's alignment would leave the memory below it unused.
        let objects = untyped(Self::OBJECTS_BITS)?;
        let ram = untyped(u64::from(ram_size.trailing_zeros()))?;
        Ok(Self { ram, objects, ram_size })
    }

    /// Deletes everything made from the memory, gives back the
    /// capabilities' slots and the window `parts` took.
    fn empty(&self, parts: &Parts) -> Result<(), InvocationError> {
        self.objects.reset()?;
        self.ram.reset()?;
        for &slot in &parts.slots {
            crate::slots::free(slot);
        }
        if let Some(window) = parts.window {
            sys::release_guest_window(window);
        }
        Ok(())
    }
}

/// Guest RAM: frames mapped both at guest-physical 0 in a GuestSpace and in
/// this task, so the VMM can load images and emulate devices that access
/// guest memory. At most 1 GiB, in 2 MiB frames.
pub struct GuestRam {
    bytes: &'static mut [u8],
}

/// Whether the page-directory-pointer table covering the guest RAM
/// windows is in this task's address space.
static WINDOW_PDPT: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Makes sure the page-directory-pointer table covering every guest RAM
/// window (they share 512 GiB) is in this task's address space: made once,
/// from the task's Untypeds, and kept for good.
fn window_pdpt() -> Result<(), InvocationError> {
    use core::sync::atomic::Ordering;
    if WINDOW_PDPT.load(Ordering::Relaxed) {
        return Ok(());
    }
    let pdpt: Cap<PageTable> = Cap::from_raw(crate::root::retype(strata_abi::object::ObjectType::Pdpt, 0)?);
    match pdpt.map(crate::cap::own::VSPACE, sys::GUEST_RAM_BASE) {
        Ok(()) | Err(InvocationError::DeleteFirst) => {
            WINDOW_PDPT.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(error) => Err(error),
    }
}

impl GuestRam {
    /// Makes `size` bytes (a multiple of 2 MiB, at most 1 GiB) of RAM from
    /// the task's Untypeds and maps them at guest-physical 0 in `space`,
    /// which must have an ASID and nothing mapped below 1 GiB.
    pub fn new(space: Cap<GuestSpace>, size: u64) -> Result<Self, GuestRamError> {
        Self::make(space, size, Source::Task, &mut Parts::default())
    }

    fn make(
        space: Cap<GuestSpace>,
        size: u64,
        source: Source,
        parts: &mut Parts,
    ) -> Result<Self, GuestRamError> {
        use strata_abi::object::{ObjectType, VmAttributes};
        let step = |what: &'static str| move |error| GuestRamError { step: what, error };
        let limit = match source {
            Source::Task => 1 << 30,
            Source::Reusable(memory) => memory.ram_size,
        };
        if size == 0 || !size.is_multiple_of(LARGE) || size > limit {
            return Err(step("checking the size")(InvocationError::InvalidArgument { index: 1 }));
        }
        let window = sys::claim_guest_window()
            .ok_or(InvocationError::NotEnoughMemory { available: 0 })
            .map_err(step("claiming an address range"))?;
        parts.window = Some(window);
        let table = |kind: ObjectType, parts: &mut Parts| {
            source
                .retype(kind, false)
                .map(|slot| Cap::<PageTable>::from_raw(parts.record(source, slot)))
                .map_err(step("making a page table"))
        };
        // This task: one PDPT for every window, and a directory per window.
        window_pdpt().map_err(step("mapping a PDPT for the window"))?;
        table(ObjectType::PageDirectory, parts)?
            .map(crate::cap::own::VSPACE, window)
            .map_err(step("mapping a page directory for the window"))?;
        table(ObjectType::Pdpt, parts)?.map_guest(space, 0).map_err(step("mapping the guest's PDPT"))?;
        table(ObjectType::PageDirectory, parts)?
            .map_guest(space, 0)
            .map_err(step("mapping the guest's page directory"))?;
        let read_write = Rights::READ | Rights::WRITE;
        for offset in (0..size).step_by(LARGE as usize) {
            let frame = source.retype(ObjectType::Frame2M, true).map_err(step("making a 2 MiB frame"))?;
            let frame: Cap<Frame> = Cap::from_raw(parts.record(source, frame));
            frame
                .map(crate::cap::own::VSPACE, window + offset, read_write, 0)
                .map_err(step("mapping RAM in the VMM"))?;
            // The guest's own page tables decide what it may execute.
            let copy =
                crate::root::mint(frame.raw(), Rights::all(), 0).map_err(step("copying a frame cap"))?;
            let copy: Cap<Frame> = Cap::from_raw(parts.record(source, copy));
            copy.map_guest(space, offset, read_write, VmAttributes::EXECUTABLE.bits())
                .map_err(step("mapping RAM in the guest"))?;
        }
        Ok(Self { bytes: sys::guest_window(window, size) })
    }

    /// The RAM, guest-physical `0..len`.
    pub fn bytes(&mut self) -> &mut [u8] {
        self.bytes
    }
}

/// A guest for this thread: a GuestSpace with an ASID from this task's
/// pool, RAM at guest-physical 0, and a VCPU bound to this thread that runs
/// in it. (For a root task: the objects come from its Untypeds.)
///
/// Its parts are reached through methods, not fields: the RAM's mappings
/// belong to this guest, and [`Self::release`] removes them.
pub struct Guest {
    space: Cap<GuestSpace>,
    ram: GuestRam,
    vcpu: Cap<Vcpu>,
    /// The memory it was made in, and what it took there.
    memory: Option<(GuestMemory, Parts)>,
}

impl Guest {
    /// The guest-physical address space.
    pub fn space(&self) -> Cap<GuestSpace> {
        self.space
    }

    /// The VCPU; [`enter`] runs it.
    pub fn vcpu(&self) -> Cap<Vcpu> {
        self.vcpu
    }

    /// The RAM, guest-physical `0..len`.
    pub fn ram(&mut self) -> &mut [u8] {
        self.ram.bytes()
    }

    /// Makes a guest with `ram` bytes of RAM (see [`GuestRam::new`]) from
    /// the task's Untypeds, for good.
    pub fn new(ram: u64) -> Result<Self, GuestRamError> {
        let (space, ram, vcpu) = Self::make(ram, Source::Task, &mut Parts::default())?;
        Ok(Self { space, ram, vcpu, memory: None })
    }

    /// Makes a guest with `ram` bytes of RAM (at most `memory`'s size) in
    /// `memory`, which it holds until [`Self::release`] hands it back. On
    /// failure, everything made is deleted and `memory` comes back with the
    /// error.
    pub fn new_in(memory: GuestMemory, ram: u64) -> Result<Self, (GuestRamError, GuestMemory)> {
        let mut parts = Parts::default();
        match Self::make(ram, Source::Reusable(&memory), &mut parts) {
            Ok((space, ram, vcpu)) => Ok(Self { space, ram, vcpu, memory: Some((memory, parts)) }),
            Err(error) => match memory.empty(&parts) {
                Ok(()) => Err((error, memory)),
                Err(cleanup) => {
                    Err((GuestRamError { step: "deleting a half-made guest", error: cleanup }, memory))
                }
            },
        }
    }

    fn make(
        ram: u64,
        source: Source,
        parts: &mut Parts,
    ) -> Result<(Cap<GuestSpace>, GuestRam, Cap<Vcpu>), GuestRamError> {
        use strata_abi::object::ObjectType;
        let step = |what: &'static str| move |error| GuestRamError { step: what, error };
        let make = |kind, parts: &mut Parts| {
            source
                .retype(kind, false)
                .map(|slot| parts.record(source, slot))
                .map_err(step("making guest objects"))
        };
        let space: Cap<GuestSpace> = Cap::from_raw(make(ObjectType::GuestSpace, parts)?);
        crate::cap::own::ASID_POOL.assign_guest(space).map_err(step("assigning an ASID"))?;
        let ram = GuestRam::make(space, ram, source, parts)?;
        let vcpu: Cap<Vcpu> = Cap::from_raw(make(ObjectType::Vcpu, parts)?);
        vcpu.set_tcb(crate::cap::own::TCB).map_err(step("binding the VCPU"))?;
        vcpu.set_space(space).map_err(step("setting the GuestSpace"))?;
        Ok((space, ram, vcpu))
    }

    /// Deletes a guest made by [`Self::new_in`]: every object of it (VCPU,
    /// GuestSpace, tables, RAM) and every capability to them, its mappings
    /// here and in the GuestSpace, and its address range here; and hands
    /// back its memory, empty, for the next guest. A guest made by
    /// [`Self::new`] is for good: `IllegalOperation`.
    pub fn release(self) -> Result<GuestMemory, InvocationError> {
        // `self` is consumed, its RAM with it: nothing can reach the
        // mappings that go now.
        let Some((memory, parts)) = self.memory else { return Err(InvocationError::IllegalOperation) };
        memory.empty(&parts)?;
        Ok(memory)
    }
}
