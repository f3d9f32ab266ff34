//! Running guests: VCPU and GuestSpace capabilities and `VmEnter`, in the
//! vendor-neutral terms of `strata_abi::vcpu`. The same program runs
//! unchanged on an AMD SVM host and an Intel VMX host.

use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::object::Rights;
use strata_abi::syscall::Syscall;
use strata_abi::vcpu::{self, Exit, RegisterBlock};

use crate::cap::{AsidPool, Cap, Frame, GuestSpace, PageTable, Tcb, Vcpu};
use crate::{call, sys};

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
            sys::set_message_words(0, block);
            vcpu::enter::LOAD_REGISTERS
        }
        None => 0,
    };
    let (label, words) = sys::syscall(Syscall::VmEnter, 0, 0, [flags, 0, 0, 0, 0, 0, 0, 0]);
    let label = label >> 12;
    if label != 0 {
        return Err(InvocationError::decode(label, [words[0], words[1], words[2], words[3]])
            .unwrap_or(InvocationError::IllegalOperation));
    }
    let reason = Exit::try_from(words[0]).unwrap_or(Exit::Unsupported);
    Ok(VmExit { reason, qualification: words[1], qualification2: words[2], length: words[3] })
}

/// The guest's registers at the last exit.
pub fn registers() -> RegisterBlock {
    let mut block = [0; vcpu::REGISTER_BLOCK_WORDS];
    sys::message_words(0, &mut block);
    block
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

/// Guest RAM: frames mapped both at guest-physical 0 in a GuestSpace and in
/// this task, so the VMM can load images and emulate devices that access
/// guest memory. At most 1 GiB, in 2 MiB frames.
pub struct GuestRam {
    bytes: &'static mut [u8],
}

impl GuestRam {
    /// Makes `size` bytes (a multiple of 2 MiB, at most 1 GiB) of RAM from
    /// the task's Untypeds and maps them at guest-physical 0 in `space`,
    /// which must have an ASID and nothing mapped below 1 GiB.
    pub fn new(space: Cap<GuestSpace>, size: u64) -> Result<Self, GuestRamError> {
        use strata_abi::object::{ObjectType, VmAttributes};
        const LARGE: u64 = 2 << 20;
        let step = |what: &'static str| move |error| GuestRamError { step: what, error };
        if size == 0 || !size.is_multiple_of(LARGE) || size > 1 << 30 {
            return Err(step("checking the size")(InvocationError::InvalidArgument { index: 1 }));
        }
        let window = sys::claim_guest_window()
            .ok_or(InvocationError::NotEnoughMemory { available: 0 })
            .map_err(step("claiming an address range"))?;
        let table = |kind: ObjectType| {
            crate::root::retype(kind, 0).map(Cap::<PageTable>::from_raw).map_err(step("making a page table"))
        };
        // This task: a PDPT (shared by every window under the same 512 GiB) and a directory.
        match table(ObjectType::Pdpt)?.map(crate::cap::own::VSPACE, window) {
            Ok(()) | Err(InvocationError::DeleteFirst) => {}
            Err(error) => return Err(step("mapping a PDPT for the window")(error)),
        }
        table(ObjectType::PageDirectory)?
            .map(crate::cap::own::VSPACE, window)
            .map_err(step("mapping a page directory for the window"))?;
        table(ObjectType::Pdpt)?.map_guest(space, 0).map_err(step("mapping the guest's PDPT"))?;
        table(ObjectType::PageDirectory)?
            .map_guest(space, 0)
            .map_err(step("mapping the guest's page directory"))?;
        let read_write = Rights::READ | Rights::WRITE;
        for offset in (0..size).step_by(LARGE as usize) {
            let frame: Cap<Frame> = Cap::from_raw(
                crate::root::retype(ObjectType::Frame2M, 0).map_err(step("making a 2 MiB frame"))?,
            );
            frame
                .map(crate::cap::own::VSPACE, window + offset, read_write, 0)
                .map_err(step("mapping RAM in the VMM"))?;
            // The guest's own page tables decide what it may execute.
            let copy: Cap<Frame> = Cap::from_raw(
                crate::root::mint(frame.raw(), Rights::all(), 0).map_err(step("copying a frame cap"))?,
            );
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
pub struct Guest {
    /// The guest-physical address space.
    pub space: Cap<GuestSpace>,
    /// Its RAM.
    pub ram: GuestRam,
    /// The VCPU; [`enter`] runs it.
    pub vcpu: Cap<Vcpu>,
}

impl Guest {
    /// Makes a guest with `ram` bytes of RAM (see [`GuestRam::new`]).
    pub fn new(ram: u64) -> Result<Self, GuestRamError> {
        use strata_abi::object::ObjectType;
        let step = |what: &'static str| move |error| GuestRamError { step: what, error };
        let make = |kind| crate::root::retype(kind, 0).map_err(step("making guest objects"));
        let space: Cap<GuestSpace> = Cap::from_raw(make(ObjectType::GuestSpace)?);
        crate::cap::own::ASID_POOL.assign_guest(space).map_err(step("assigning an ASID"))?;
        let ram = GuestRam::new(space, ram)?;
        let vcpu: Cap<Vcpu> = Cap::from_raw(make(ObjectType::Vcpu)?);
        vcpu.set_tcb(crate::cap::own::TCB).map_err(step("binding the VCPU"))?;
        vcpu.set_space(space).map_err(step("setting the GuestSpace"))?;
        Ok(Self { space, ram, vcpu })
    }
}
