//! CNode invocations: revoke, delete, copy, mint, move, mutate
//! (seL4 `decodeCNodeInvocation`), decoded without side effects first.
//!
//! Message words: `[dest index, dest depth, src index, src depth, rights, data]`
//! (rights only for copy and mint; data for mint, and in place of rights
//! for mutate). The source CSpace root is the first extra capability.

use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::object::Rights;

use super::delete::{Budget, Progress};
use super::{Capability, ObjectSpace, PhysicalMemory, Slot};

/// A checked CNode invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CNodeInvocation {
    /// Delete everything derived from the capability in `slot`.
    Revoke {
        /// The slot.
        slot: Slot,
    },
    /// Delete the capability in `slot`.
    Delete {
        /// The slot.
        slot: Slot,
    },
    /// Insert `cap`, derived from `source`, into the empty `destination`.
    Derive {
        /// The source slot.
        source: Slot,
        /// The destination slot.
        destination: Slot,
        /// The derived capability.
        cap: Capability,
    },
    /// Move the capability in `source` to the empty `destination` as `cap`.
    Move {
        /// The source slot.
        source: Slot,
        /// The destination slot.
        destination: Slot,
        /// The capability as stored at the destination.
        cap: Capability,
    },
}

fn depth(word: u64) -> Result<u8, InvocationError> {
    match word {
        1..=64 => Ok(word as u8),
        _ => Err(InvocationError::RangeError { min: 1, max: 64 }),
    }
}

/// A CNode guard in the `data` word: guard size in bits 0-5, guard in 6-63.
fn cnode_with_guard(cap: Capability, data: u64) -> Result<Capability, InvocationError> {
    let Capability::CNode { object, radix, .. } = cap else { return Err(InvocationError::IllegalOperation) };
    let guard_size = (data & 0x3f) as u8;
    let guard = data >> 6;
    let fits =
        u32::from(guard_size) + u32::from(radix) <= 64 && (guard_size >= 58 || guard >> guard_size == 0);
    if !fits {
        return Err(InvocationError::InvalidArgument { index: 5 });
    }
    Ok(Capability::CNode { object, radix, guard_size, guard })
}

/// The capability `source` would become when copied with `rights` and,
/// for mint, `data` (a badge, or a CNode guard).
pub(crate) fn derive(
    source: Capability,
    rights: Rights,
    data: Option<u64>,
) -> Result<Capability, InvocationError> {
    match source {
        Capability::Null => Err(InvocationError::FailedLookup {
            source: true,
            failure: strata_abi::error::LookupFailure::MissingCapability { bits_left: 0 },
        }),
        // See `untyped`: one capability per Untyped region.
        Capability::Untyped { .. } | Capability::Zombie { .. } => Err(InvocationError::IllegalOperation),
        Capability::Endpoint { object, badge, rights: old }
        | Capability::Notification { object, badge, rights: old } => {
            let badge = match data {
                // A badge, once set, is fixed.
                Some(new) if new != 0 && badge != 0 => {
                    return Err(InvocationError::IllegalOperation);
                }
                Some(new) if new != 0 => new,
                _ => badge,
            };
            let rights = old & rights;
            Ok(if matches!(source, Capability::Endpoint { .. }) {
                Capability::Endpoint { object, badge, rights }
            } else {
                Capability::Notification { object, badge, rights }
            })
        }
        Capability::CNode { .. } => match data {
            Some(data) => cnode_with_guard(source, data),
            None => Ok(source),
        },
        Capability::Tcb { .. }
        | Capability::Vcpu { .. }
        | Capability::AsidControl
        | Capability::AsidPool { .. }
        | Capability::IoPort { .. }
        | Capability::IrqHandler { .. } => Ok(source),
        // There is one control capability, so issued ranges stay children
        // of a single slot and revoking it takes them all back.
        Capability::IoPortControl | Capability::IrqControl => Err(InvocationError::IllegalOperation),
        // A copy of a frame starts unmapped: each capability maps it once.
        Capability::Frame { object, size, rights: old, device, .. } => {
            Ok(Capability::Frame { object, size, rights: old & rights, device, mapping: None })
        }
        // Copies of a table share its one mapping, so only a mapped table
        // can be copied (two unmapped copies could be mapped twice); the
        // same goes for an address space and its ASID.
        Capability::PageTable { mapping: Some(_), .. }
        | Capability::Pml4 { asid: Some(_), .. }
        | Capability::GuestSpace { asid: Some(_), .. } => Ok(source),
        Capability::PageTable { .. } | Capability::Pml4 { .. } | Capability::GuestSpace { .. } => {
            Err(InvocationError::IllegalOperation)
        }
    }
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// Decodes a CNode invocation on `cnode` with message `words` and the
    /// extra capability `source_root`.
    pub fn decode_cnode(
        &self,
        cnode: Capability,
        label: Label,
        words: &[u64],
        source_root: Option<Capability>,
    ) -> Result<CNodeInvocation, InvocationError> {
        let needed = match label {
            Label::CNodeRevoke | Label::CNodeDelete => 2,
            Label::CNodeMove => 4,
            Label::CNodeCopy | Label::CNodeMutate => 5,
            Label::CNodeMint => 6,
            _ => return Err(InvocationError::IllegalOperation),
        };
        if words.len() < needed {
            return Err(InvocationError::TruncatedMessage { needed: needed as u8 });
        }
        let lookup = |root: Capability, index: u64, depth_word: u64, source: bool| {
            let depth = depth(depth_word)?;
            self.lookup_slot(root, index, depth)
                .map_err(|failure| InvocationError::FailedLookup { source, failure })
        };
        let destination = lookup(cnode, words[0], words[1], false)?;
        match label {
            Label::CNodeRevoke => return Ok(CNodeInvocation::Revoke { slot: destination }),
            Label::CNodeDelete => return Ok(CNodeInvocation::Delete { slot: destination }),
            _ => {}
        }
        if !self.cap(destination).is_null() {
            return Err(InvocationError::DeleteFirst);
        }
        let root = source_root.ok_or(InvocationError::InvalidCapability { index: 1 })?;
        let source = lookup(root, words[2], words[3], true)?;
        let source_cap = self.cap(source);
        if source_cap.is_null() {
            return Err(InvocationError::FailedLookup {
                source: true,
                failure: strata_abi::error::LookupFailure::MissingCapability { bits_left: 0 },
            });
        }
        match label {
            Label::CNodeCopy | Label::CNodeMint => {
                let rights = Rights::from_bits_truncate(words[4]);
                let data = (label == Label::CNodeMint).then(|| words[5]);
                let cap = derive(source_cap, rights, data)?;
                Ok(CNodeInvocation::Derive { source, destination, cap })
            }
            Label::CNodeMove => {
                if matches!(source_cap, Capability::Zombie { .. }) {
                    return Err(InvocationError::IllegalOperation);
                }
                Ok(CNodeInvocation::Move { source, destination, cap: source_cap })
            }
            Label::CNodeMutate => {
                let data = words[4];
                let cap = match source_cap {
                    Capability::CNode { .. } => cnode_with_guard(source_cap, data)?,
                    Capability::Zombie { .. } => return Err(InvocationError::IllegalOperation),
                    // Only a CNode's guard can be changed in place; badges are set by mint.
                    _ if data != 0 => return Err(InvocationError::IllegalOperation),
                    _ => source_cap,
                };
                Ok(CNodeInvocation::Move { source, destination, cap })
            }
            _ => Err(InvocationError::IllegalOperation),
        }
    }

    /// Performs a decoded CNode invocation.
    pub fn perform_cnode(&mut self, invocation: CNodeInvocation, budget: &mut Budget) -> Progress {
        match invocation {
            CNodeInvocation::Revoke { slot } => self.revoke(slot, budget),
            CNodeInvocation::Delete { slot } => self.delete(slot, budget),
            CNodeInvocation::Derive { source, destination, cap } => {
                self.insert_derived(source, destination, cap);
                Progress::Done
            }
            CNodeInvocation::Move { source, destination, cap } => {
                self.move_cap(source, destination, cap);
                Progress::Done
            }
        }
    }
}
