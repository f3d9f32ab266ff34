//! Untyped memory: retyping it into objects (seL4 `decodeUntypedInvocation`).
//!
//! Objects are carved from the Untyped at its free index, each aligned to
//! its own size; the free index only grows, so objects from one Untyped
//! never overlap. When an Untyped has no children left (they were all
//! revoked or deleted) the next retype starts again from its base.
//!
//! Untyped capabilities cannot be copied or minted, only moved: two
//! capabilities to one region would each hand out the same memory.
//! Smaller Untypeds retyped from a larger one are the way to share out memory.

use strata_abi::error::InvocationError;
use strata_abi::object::{ObjectType, Rights, SizeOutOfRange};

use super::cap::{FrameSize, TableLevel};
use super::{Capability, ObjectSpace, PhysicalMemory, Slot};
use crate::addr::PhysAddr;

/// Most objects one retype creates.
pub const MAX_OBJECTS_PER_RETYPE: u64 = 256;

/// A retype that decode has checked completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retype {
    /// The Untyped's slot.
    pub untyped: Slot,
    /// What to create.
    pub object_type: ObjectType,
    /// Each object's size, as a power of two.
    pub object_size_bits: u32,
    /// The caller's size argument (CNode radix, Untyped size).
    pub user_size: u32,
    /// Where the first object goes.
    pub first_object: PhysAddr,
    /// The destination CNode's slot array.
    pub destination: PhysAddr,
    /// First destination slot index.
    pub first_slot: u64,
    /// Number of objects.
    pub count: u64,
    /// Whether the Untyped had no children, so its free index restarts at 0.
    pub reset: bool,
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// Checks a retype of the Untyped in `untyped` into `count` objects,
    /// placed in slots `first_slot..` of the CNode capability `destination`.
    #[allow(clippy::too_many_arguments)] // The invocation has this many arguments.
    pub fn decode_retype(
        &self,
        untyped: Slot,
        object_type: u64,
        user_size: u64,
        destination: Capability,
        first_slot: u64,
        count: u64,
    ) -> Result<Retype, InvocationError> {
        let Capability::Untyped { base, size_bits, free_index, device } = self.cap(untyped) else {
            return Err(InvocationError::InvalidCapability { index: 0 });
        };
        let object_type =
            ObjectType::try_from(object_type).map_err(|_| InvocationError::InvalidArgument { index: 0 })?;
        let user_size = u32::try_from(user_size).unwrap_or(u32::MAX);
        let object_size_bits = object_type.size_bits(user_size).map_err(|SizeOutOfRange { min, max }| {
            InvocationError::RangeError { min: u64::from(min), max: u64::from(max) }
        })?;
        if !(1..=MAX_OBJECTS_PER_RETYPE).contains(&count) {
            return Err(InvocationError::RangeError { min: 1, max: MAX_OBJECTS_PER_RETYPE });
        }
        // Device memory may hold only device Untypeds (and, later, frames):
        // the kernel never keeps its own state in it.
        if device && object_type != ObjectType::Untyped {
            return Err(InvocationError::InvalidArgument { index: 0 });
        }
        // Without hardware virtualization there is nothing to run a VCPU on.
        if matches!(object_type, ObjectType::Vcpu | ObjectType::GuestSpace)
            && self.virt.backend == super::vcpu::Backend::None
        {
            return Err(InvocationError::IllegalOperation);
        }
        let Capability::CNode { object: cnode, radix, .. } = destination else {
            return Err(InvocationError::InvalidCapability { index: 1 });
        };
        let slots = 1u64 << radix;
        if first_slot >= slots || count > slots - first_slot {
            return Err(InvocationError::RangeError { min: 0, max: slots - 1 });
        }
        for index in first_slot..first_slot + count {
            if !self.cap(Slot::in_cnode(cnode, index)).is_null() {
                return Err(InvocationError::DeleteFirst);
            }
        }
        let reset = !self.has_children(untyped);
        let used = if reset { 0 } else { free_index };
        let object_size = 1u64 << object_size_bits;
        let size = 1u64 << size_bits;
        let available = size - used;
        let start = (base.get() + used).next_multiple_of(object_size);
        let needed = count.checked_mul(object_size);
        let end = needed.and_then(|n| start.checked_add(n));
        if object_size_bits > u32::from(size_bits) || end.is_none_or(|end| end > base.get() + size) {
            return Err(InvocationError::NotEnoughMemory { available });
        }
        Ok(Retype {
            untyped,
            object_type,
            object_size_bits,
            user_size,
            first_object: PhysAddr(start),
            destination: cnode,
            first_slot,
            count,
            reset,
        })
    }

    /// Creates the objects and their capabilities.
    pub fn perform_retype(&mut self, retype: &Retype) {
        let Capability::Untyped { base, size_bits, device, .. } = self.cap(retype.untyped) else {
            debug_assert!(false, "decode checked the Untyped");
            return;
        };
        let object_size = 1u64 << retype.object_size_bits;
        for n in 0..retype.count {
            let object = retype.first_object.offset(n * object_size);
            let cap = match retype.object_type {
                // Untyped memory is not zeroed here: objects are zeroed when
                // they are made from it.
                ObjectType::Untyped => Capability::Untyped {
                    base: object,
                    size_bits: retype.object_size_bits as u8,
                    free_index: 0,
                    device,
                },
                ObjectType::Tcb => Capability::Tcb { object },
                ObjectType::Endpoint => Capability::Endpoint { object, badge: 0, rights: Rights::all() },
                ObjectType::Notification => {
                    Capability::Notification { object, badge: 0, rights: Rights::all() }
                }
                ObjectType::CNode => {
                    Capability::CNode { object, radix: retype.user_size as u8, guard_size: 0, guard: 0 }
                }
                ObjectType::Frame4K | ObjectType::Frame2M => {
                    let large = retype.object_type == ObjectType::Frame2M;
                    let size = if large { FrameSize::Large } else { FrameSize::Small };
                    let rights = Rights::READ | Rights::WRITE;
                    Capability::Frame { object, size, rights, device, mapping: None }
                }
                ObjectType::PageTable => {
                    Capability::PageTable { object, level: TableLevel::PageTable, mapping: None }
                }
                ObjectType::PageDirectory => {
                    Capability::PageTable { object, level: TableLevel::PageDirectory, mapping: None }
                }
                ObjectType::Pdpt => Capability::PageTable { object, level: TableLevel::Pdpt, mapping: None },
                ObjectType::Pml4 => Capability::Pml4 { object, asid: None },
                ObjectType::GuestSpace => Capability::GuestSpace { object, asid: None },
                ObjectType::Vcpu => Capability::Vcpu { object },
            };
            // Device memory is never written by the kernel; Untypeds are
            // zeroed piecewise as objects are made from them.
            if retype.object_type != ObjectType::Untyped && !device {
                self.memory.zero(object, object_size);
            }
            match retype.object_type {
                ObjectType::Pml4 => self.init_pml4(object),
                ObjectType::Tcb => self.init_tcb(object),
                ObjectType::Vcpu => self.init_vcpu(object),
                _ => {}
            }
            let slot = Slot::in_cnode(retype.destination, retype.first_slot + n);
            self.insert_new_object(retype.untyped, slot, cap);
        }
        let end = retype.first_object.get() + retype.count * object_size;
        debug_assert!(end <= base.get() + (1 << size_bits));
        self.set_cap(
            retype.untyped,
            Capability::Untyped { base, size_bits, free_index: end - base.get(), device },
        );
    }
}
