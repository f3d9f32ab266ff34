//! Typed capabilities: a capability pointer that knows what it points at,
//! with the object's invocations as methods. `Cap<Endpoint>` can be
//! called and `Cap<Tcb>` resumed, and passing a frame where an endpoint is
//! expected is a compile error rather than an `InvalidCapability` reply.
//!
//! A `Cap` is only a name in this task's CSpace: copying it copies the
//! pointer, not the capability (use [`Cap::<CNode>::mint`] for that).

use core::fmt;
use core::marker::PhantomData;

use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::object::{ObjectType, Rights};

use crate::root::DEPTH;
use crate::{CPtr, Message, call};

/// This task's CSpace root, where fresh slots are.
const ROOT: CPtr = strata_abi::bootinfo::slot::CNODE;

/// Object kinds (uninhabited markers for [`Cap`]).
pub mod kind {
    /// An endpoint (synchronous IPC).
    #[derive(Debug)]
    pub enum Endpoint {}
    /// A notification (asynchronous signals).
    #[derive(Debug)]
    pub enum Notification {}
    /// A thread.
    #[derive(Debug)]
    pub enum Tcb {}
    /// A CNode (slots for capabilities).
    #[derive(Debug)]
    pub enum CNode {}
    /// Untyped memory.
    #[derive(Debug)]
    pub enum Untyped {}
    /// A 4 KiB or 2 MiB frame.
    #[derive(Debug)]
    pub enum Frame {}
    /// A PDPT, page directory or page table.
    #[derive(Debug)]
    pub enum PageTable {}
    /// An address space (PML4).
    #[derive(Debug)]
    pub enum Pml4 {}
    /// An ASID pool.
    #[derive(Debug)]
    pub enum AsidPool {}
    /// A virtual CPU.
    #[derive(Debug)]
    pub enum Vcpu {}
    /// A guest-physical address space.
    #[derive(Debug)]
    pub enum GuestSpace {}
}

pub use kind::*;

/// Kinds an Untyped can be retyped into, with their object type.
pub trait Object {
    /// The object type `UntypedRetype` takes.
    const TYPE: ObjectType;
}

macro_rules! objects {
    ($($kind:ident => $object_type:ident),* $(,)?) => {
        $(impl Object for $kind {
            const TYPE: ObjectType = ObjectType::$object_type;
        })*
    };
}

objects! {
    Endpoint => Endpoint,
    Notification => Notification,
    Tcb => Tcb,
    CNode => CNode,
    Untyped => Untyped,
    Frame => Frame4K,
    Pml4 => Pml4,
    Vcpu => Vcpu,
    GuestSpace => GuestSpace,
}

/// A capability to an object of kind `K` in this task's CSpace.
pub struct Cap<K> {
    cptr: CPtr,
    kind: PhantomData<fn() -> K>,
}

impl<K> Cap<K> {
    /// Names the capability at `cptr`, which the caller knows to be a `K`.
    /// (If it is not, invocations fail with `InvalidCapability`: nothing
    /// unsafe happens.)
    pub const fn from_raw(cptr: CPtr) -> Self {
        Self { cptr, kind: PhantomData }
    }

    /// The capability pointer.
    pub const fn raw(self) -> CPtr {
        self.cptr
    }

    /// The same capability pointer, seen as another kind (for objects that
    /// are several kinds at once, such as a PML4 as an address space root).
    pub const fn cast<L>(self) -> Cap<L> {
        Cap::from_raw(self.cptr)
    }
}

impl<K> Clone for Cap<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K> Copy for Cap<K> {}
impl<K> PartialEq for Cap<K> {
    fn eq(&self, other: &Self) -> bool {
        self.cptr == other.cptr
    }
}
impl<K> Eq for Cap<K> {}

impl<K> fmt::Debug for Cap<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = core::any::type_name::<K>().rsplit("::").next().unwrap_or("?");
        write!(f, "Cap<{name}>({})", self.cptr)
    }
}

impl Cap<Endpoint> {
    /// Calls: sends `words` with `label` and waits for the reply.
    pub fn call(self, label: u64, words: &[u64]) -> Message {
        crate::ipc_call(self.cptr, label, words)
    }

    /// Sends, waiting for a receiver.
    pub fn send(self, label: u64, words: &[u64]) {
        crate::send(self.cptr, label, words)
    }

    /// Waits for a message.
    pub fn recv(self) -> Message {
        crate::recv(self.cptr)
    }

    /// Replies to the last caller and waits for the next message.
    pub fn reply_recv(self, label: u64, words: &[u64]) -> Message {
        crate::reply_recv(self.cptr, label, words)
    }
}

impl Cap<Notification> {
    /// ORs this capability's badge into the notification word.
    pub fn signal(self) {
        crate::signal(self.cptr)
    }

    /// Waits for a signal; returns the bits that were set.
    pub fn wait(self) -> u64 {
        crate::recv(self.cptr).badge
    }

    /// Takes the pending bits without waiting (0: none).
    pub fn poll(self) -> u64 {
        crate::poll(self.cptr)
    }
}

/// The registers `TcbWriteRegisters` sets, by name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registers {
    /// RAX to R15, in encoding order (RAX, RBX, RCX, RDX, RSI, RDI, RBP, R8–R15).
    pub general: [u64; 15],
    /// The instruction pointer.
    pub rip: u64,
    /// The stack pointer.
    pub rsp: u64,
    /// The flags (the kernel keeps only the arithmetic ones; IF is always set).
    pub rflags: u64,
}

impl Registers {
    /// Index of RDI in `general` (the first argument register).
    pub const RDI: usize = 5;

    fn words(&self) -> [u64; 18] {
        let mut words = [0; 18];
        words[..15].copy_from_slice(&self.general);
        (words[15], words[16], words[17]) = (self.rip, self.rsp, self.rflags);
        words
    }
}

impl Cap<Tcb> {
    /// Sets the thread's CSpace root, address space and IPC buffer (at
    /// `ipc_buffer_address`, in `ipc_buffer`; `None`: no buffer), and its
    /// fault endpoint (a pointer in its own CSpace; 0: none).
    pub fn configure(
        self,
        cspace: Cap<CNode>,
        vspace: Cap<Pml4>,
        ipc_buffer: Option<(Cap<Frame>, u64)>,
        fault_endpoint: CPtr,
    ) -> Result<(), InvocationError> {
        match ipc_buffer {
            Some((frame, address)) => call(
                self.cptr,
                Label::TcbConfigure,
                &[address, fault_endpoint],
                &[cspace.cptr, vspace.cptr, frame.cptr],
            ),
            None => call(self.cptr, Label::TcbConfigure, &[0, fault_endpoint], &[cspace.cptr, vspace.cptr]),
        }
        .map(drop)
    }

    /// Sets the priority and the maximum controlled priority, with the
    /// authority of `authority` (a thread whose maximum controlled
    /// priority is at least both).
    pub fn set_priority(self, priority: u8, maximum: u8, authority: Cap<Tcb>) -> Result<(), InvocationError> {
        call(self.cptr, Label::TcbSetPriority, &[u64::from(priority), u64::from(maximum)], &[authority.cptr])
            .map(drop)
    }

    /// Sets the registers.
    pub fn write_registers(self, registers: &Registers) -> Result<(), InvocationError> {
        call(self.cptr, Label::TcbWriteRegisters, &registers.words(), &[]).map(drop)
    }

    /// Makes the thread runnable.
    pub fn resume(self) -> Result<(), InvocationError> {
        call(self.cptr, Label::TcbResume, &[], &[]).map(drop)
    }

    /// Stops the thread.
    pub fn suspend(self) -> Result<(), InvocationError> {
        call(self.cptr, Label::TcbSuspend, &[], &[]).map(drop)
    }

    /// Binds a notification: a signal then also wakes the thread from an
    /// endpoint receive.
    pub fn bind_notification(self, notification: Cap<Notification>) -> Result<(), InvocationError> {
        call(self.cptr, Label::TcbBindNotification, &[], &[notification.cptr]).map(drop)
    }
}

impl Cap<CNode> {
    /// Copies `source` (a pointer in this task's CSpace) into `index` of this
    /// CNode, at `depth`, with `rights` and `badge` (for a CNode: its guard,
    /// size in bits 0–5 and value above).
    pub fn mint(
        self,
        index: u64,
        depth: u64,
        source: CPtr,
        rights: Rights,
        badge: u64,
    ) -> Result<(), InvocationError> {
        let words = [index, depth, source, DEPTH, rights.bits(), badge];
        call(self.cptr, Label::CNodeMint, &words, &[ROOT]).map(drop)
    }

    /// Copies `source` into `index` of this CNode unchanged.
    pub fn copy(self, index: u64, depth: u64, source: CPtr) -> Result<(), InvocationError> {
        let words = [index, depth, source, DEPTH, Rights::all().bits()];
        call(self.cptr, Label::CNodeCopy, &words, &[ROOT]).map(drop)
    }

    /// Moves `source` into `index` of this CNode.
    pub fn move_from(self, index: u64, depth: u64, source: CPtr) -> Result<(), InvocationError> {
        call(self.cptr, Label::CNodeMove, &[index, depth, source, DEPTH], &[ROOT]).map(drop)
    }

    /// Deletes the capability at `index`.
    pub fn delete(self, index: u64, depth: u64) -> Result<(), InvocationError> {
        call(self.cptr, Label::CNodeDelete, &[index, depth], &[]).map(drop)
    }

    /// Deletes every capability derived from the one at `index` (for an
    /// Untyped: every object made from it, which resets it).
    pub fn revoke(self, index: u64, depth: u64) -> Result<(), InvocationError> {
        call(self.cptr, Label::CNodeRevoke, &[index, depth], &[]).map(drop)
    }
}

impl Cap<Untyped> {
    /// Makes one `K` (of `size` bits or radix where it applies) into a
    /// fresh slot of this task's CNode.
    pub fn retype<K: Object>(self, size: u64) -> Result<Cap<K>, InvocationError> {
        self.retype_type(K::TYPE, size).map(Cap::from_raw)
    }

    /// As [`Self::retype`], for an object type chosen at run time (a
    /// paging structure, a 2 MiB frame).
    pub fn retype_type(self, kind: ObjectType, size: u64) -> Result<CPtr, InvocationError> {
        let slot = crate::root::fresh_slot();
        let words = [kind as u64, size, ROOT, DEPTH, slot, 1];
        match call(self.cptr, Label::UntypedRetype, &words, &[ROOT]) {
            Ok(_) => Ok(slot),
            Err(error) => {
                crate::slots::free(slot);
                Err(error)
            }
        }
    }

    /// Deletes everything made from this Untyped (and everything derived
    /// from that), so that its memory can be used again.
    pub fn reset(self) -> Result<(), InvocationError> {
        Cap::<CNode>::from_raw(ROOT).revoke(self.cptr, DEPTH)
    }
}

impl Cap<Frame> {
    /// Maps the frame at `address` in `vspace`.
    pub fn map(
        self,
        vspace: Cap<Pml4>,
        address: u64,
        rights: Rights,
        attributes: u64,
    ) -> Result<(), InvocationError> {
        crate::root::map_frame(self.cptr, vspace.cptr, address, rights, attributes)
    }

    /// Removes the frame's mapping.
    pub fn unmap(self) -> Result<(), InvocationError> {
        call(self.cptr, Label::FrameUnmap, &[], &[]).map(drop)
    }

    /// The frame's physical address.
    pub fn physical_address(self) -> Result<u64, InvocationError> {
        call(self.cptr, Label::FrameGetAddress, &[], &[]).map(|reply| reply[0])
    }
}

impl Cap<PageTable> {
    /// Installs the table in `vspace` where it covers `address`.
    pub fn map(self, vspace: Cap<Pml4>, address: u64) -> Result<(), InvocationError> {
        call(self.cptr, Label::PageTableMap, &[address], &[vspace.cptr]).map(drop)
    }
}

impl Cap<AsidPool> {
    /// Gives `vspace` an ASID from this pool.
    pub fn assign(self, vspace: Cap<Pml4>) -> Result<(), InvocationError> {
        call(self.cptr, Label::AsidPoolAssign, &[], &[vspace.cptr]).map(drop)
    }
}

/// This task's own capabilities, in the fixed slots every task has.
pub mod own {
    use super::*;
    use strata_abi::bootinfo::slot;

    /// This task's CNode (its CSpace root).
    pub const CNODE: Cap<CNode> = Cap::from_raw(slot::CNODE);
    /// This task's address space.
    pub const VSPACE: Cap<Pml4> = Cap::from_raw(slot::VSPACE);
    /// This task's thread.
    pub const TCB: Cap<Tcb> = Cap::from_raw(slot::TCB);
    /// The root task's first ASID pool.
    pub const ASID_POOL: Cap<AsidPool> = Cap::from_raw(slot::ASID_POOL);
    /// A child's endpoint to its parent.
    pub const PARENT: Cap<Endpoint> = Cap::from_raw(slot::PARENT);
}
