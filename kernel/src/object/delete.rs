//! Deleting and revoking capabilities, in bounded steps.
//!
//! Deleting the last capability to a CNode must delete every capability
//! inside it, and those may be the last capabilities to further CNodes, to
//! any depth, possibly in cycles. As in seL4 this is done without recursion
//! and so that it can be preempted: the slot being deleted is turned into a
//! [`Capability::Zombie`] that records how many of the CNode's slots are
//! still to be emptied, and each step empties one slot (from the last one
//! down). All progress is in the slots, so an operation that ran out of
//! budget is resumed by simply calling it again.
//!
//! A step starts at the slot being deleted and follows the chain of zombies
//! (a zombie whose last remaining slot holds another zombie) to the deepest
//! one, and works there. Two cases need care:
//! - a zombie's own slot can lie inside the CNode it is destroying (the last
//!   capability to a CNode was stored in that CNode): that slot is skipped,
//!   and emptied last, when the zombie is removed;
//! - zombies can form a cycle (two CNodes each holding the last capability
//!   to the other). The walk notices the repeat and swaps the two slots'
//!   contents, which turns both into the first case. The CNode that ends up
//!   in the other's slot is then unreachable except through its Untyped's
//!   derivation tree, and is destroyed when that Untyped is revoked, as
//!   any unreachable object is.

use heapless::Vec;

use super::{Capability, ObjectSpace, PhysicalMemory, Slot};

/// How much work an operation may do before it must let the kernel
/// preempt it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(pub u32);

impl Budget {
    /// Uses one unit; `false` once none is left.
    pub fn spend(&mut self) -> bool {
        let Some(rest) = self.0.checked_sub(1) else { return false };
        self.0 = rest;
        true
    }
}

/// Whether an operation finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Progress {
    /// It is complete.
    Done,
    /// It ran out of budget; call it again to continue.
    Preempted,
}

/// Longest zombie chain followed with cycle detection. Deeper chains are
/// worked on at this depth by the same swap as for cycles: every step still
/// makes progress, and the CNode swapped aside is reclaimed with its Untyped.
const MAX_CHAIN: usize = 32;

/// What one step did.
enum Step {
    /// The slot being deleted is now empty.
    Finished,
    /// Work was done; the slot is not empty yet.
    Continue,
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// Deletes the capability in `slot`; if it was the last capability to
    /// its object, the object is destroyed.
    pub fn delete(&mut self, slot: Slot, budget: &mut Budget) -> Progress {
        loop {
            match self.delete_step(slot) {
                Step::Finished => return Progress::Done,
                Step::Continue if !budget.spend() => return Progress::Preempted,
                Step::Continue => {}
            }
        }
    }

    /// Deletes every capability derived from the one in `slot`.
    ///
    /// If `slot` itself lies in a CNode that the revoke destroys, the revoke
    /// ends when that slot is emptied (there is nothing left to revoke
    /// from). A CNode whose destruction was preempted at that moment stays
    /// behind as a zombie in its slot. It is consistent, and it is finished
    /// by deleting that slot or revoking an Untyped above it, as in seL4.
    pub fn revoke(&mut self, slot: Slot, budget: &mut Budget) -> Progress {
        while self.has_children(slot) {
            let Some(child) = self.mdb(slot).next else { break };
            if self.delete(child, budget) == Progress::Preempted || !budget.spend() {
                return Progress::Preempted;
            }
        }
        Progress::Done
    }

    fn delete_step(&mut self, slot: Slot) -> Step {
        match self.cap(slot) {
            Capability::Null => Step::Finished,
            Capability::Zombie { .. } => self.zombie_step(slot),
            cap => self.delete_or_zombify(slot, cap),
        }
    }

    /// Deletes `cap`, the capability in `slot` (`Finished`: the slot is
    /// empty); or, if it is the last capability to a CNode or TCB, turns it
    /// into a zombie whose slots later steps empty (`Continue`).
    fn delete_or_zombify(&mut self, slot: Slot, cap: Capability) -> Step {
        let last = self.is_final(slot);
        if last && matches!(cap, Capability::CNode { .. } | Capability::Tcb { .. }) {
            let zombie = self.zombie_for(&cap);
            self.set_cap(slot, zombie);
            return Step::Continue;
        }
        self.finalise(&cap, last);
        self.remove(slot);
        Step::Finished
    }

    /// Releases what a deleted capability holds: a mapping, an ASID, a
    /// pool (see `vspace`), the threads queued on an endpoint or
    /// notification (see `ipc`), or a range of I/O ports (see `ioport`). `last` says whether it was the last
    /// capability to its object.
    fn finalise(&mut self, cap: &Capability, last: bool) {
        self.finalise_vspace(cap, last);
        if last {
            self.finalise_ipc_object(cap);
            self.finalise_ioport(cap);
            self.finalise_irq(cap);
            self.finalise_vcpu(cap);
        }
    }

    /// The zombie that replaces the last capability to a CNode or TCB: it
    /// covers the slots to be emptied (all of a CNode's; a TCB's two). A
    /// TCB leaves the run queues first.
    fn zombie_for(&mut self, cap: &Capability) -> Capability {
        match *cap {
            Capability::CNode { object, radix, .. } => {
                Capability::Zombie { object, radix, remaining: 1 << radix }
            }
            Capability::Tcb { object } => {
                self.finalise_tcb(object);
                let radix = super::tcb::TCB_SLOTS_RADIX;
                let slots = object.offset(super::tcb::layout::SLOTS);
                Capability::Zombie { object: slots, radix, remaining: 1 << radix }
            }
            other => other,
        }
    }

    /// One unit of work on the zombie chain starting at `top`.
    fn zombie_step(&mut self, top: Slot) -> Step {
        let mut path: Vec<Slot, MAX_CHAIN> = Vec::new();
        let mut current = top;
        loop {
            let Capability::Zombie { object, radix, remaining } = self.cap(current) else {
                return Step::Continue;
            };
            if remaining == 0 {
                self.remove(current);
                return if current == top { Step::Finished } else { Step::Continue };
            }
            let target = Slot::in_cnode(object, remaining - 1);
            let shrink = |this: &mut Self| {
                this.set_cap(current, Capability::Zombie { object, radix, remaining: remaining - 1 });
            };
            if target == current {
                // The zombie lives in the CNode it destroys: its own slot is
                // emptied last, by `remove` above.
                shrink(self);
                return Step::Continue;
            }
            match self.cap(target) {
                Capability::Null => {
                    shrink(self);
                    return Step::Continue;
                }
                Capability::Zombie { .. } => {
                    // A cycle of zombies: swapping makes each of the two live
                    // in the CNode it destroys. A chain too deep to track:
                    // work here instead, which still progresses (see the
                    // module documentation).
                    if path.contains(&target) || target == top || path.push(current).is_err() {
                        self.swap(current, target);
                        return Step::Continue;
                    }
                    current = target;
                }
                cap => {
                    if let Step::Finished = self.delete_or_zombify(target, cap) {
                        shrink(self);
                    }
                    return Step::Continue;
                }
            }
        }
    }
}
