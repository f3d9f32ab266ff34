//! Slots of the task's CNode: which are free, so that slots emptied by a
//! delete or revoke are used again. The CNode is the task's CSpace root,
//! guarded so that a slot number is a capability pointer at depth 64 (the
//! layout the kernel gives the root task and `process` gives children).

use spin::Mutex;

use crate::CPtr;

/// Most slots tracked (a radix-12 CNode).
pub const MAX_SLOTS: usize = 4096;

/// A bitmap of used slots in a CNode of `limit` slots.
#[derive(Debug, Clone)]
pub struct SlotBitmap {
    used: [u64; MAX_SLOTS / 64],
    limit: u64,
    /// No free slot below this one.
    hint: u64,
}

impl SlotBitmap {
    /// A CNode of `2^radix` slots (at most [`MAX_SLOTS`] are used) whose
    /// slots below `first_free` are taken.
    pub const fn new(radix: u32, first_free: u64) -> Self {
        let limit = if radix >= 12 { MAX_SLOTS as u64 } else { 1 << radix };
        let mut bitmap = Self { used: [0; MAX_SLOTS / 64], limit, hint: 0 };
        let mut slot = 0;
        while slot < first_free && slot < limit {
            bitmap.used[(slot / 64) as usize] |= 1 << (slot % 64);
            slot += 1;
        }
        bitmap.hint = if first_free < limit { first_free } else { limit };
        bitmap
    }

    /// Takes the lowest free slot.
    pub fn allocate(&mut self) -> Option<CPtr> {
        let mut word = (self.hint / 64) as usize;
        while (word as u64) * 64 < self.limit {
            let free = !self.used[word];
            if free != 0 {
                let slot = word as u64 * 64 + u64::from(free.trailing_zeros());
                if slot >= self.limit {
                    return None;
                }
                self.used[word] |= 1 << (slot % 64);
                self.hint = slot + 1;
                return Some(slot);
            }
            word += 1;
        }
        None
    }

    /// Gives `slot` back. Slots outside the CNode, and free ones, are ignored.
    pub fn free(&mut self, slot: CPtr) {
        if slot < self.limit {
            self.used[(slot / 64) as usize] &= !(1 << (slot % 64));
            self.hint = self.hint.min(slot);
        }
    }

    /// Whether `slot` is taken.
    pub fn is_used(&self, slot: CPtr) -> bool {
        slot >= self.limit || self.used[(slot / 64) as usize] & (1 << (slot % 64)) != 0
    }
}

static SLOTS: Mutex<Option<SlotBitmap>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut SlotBitmap) -> T) -> T {
    let mut slots = SLOTS.lock();
    let bitmap = slots.get_or_insert_with(|| {
        let info = crate::boot_info();
        SlotBitmap::new(info.cnode_radix as u32, info.first_free_slot)
    });
    f(bitmap)
}

/// A free slot of this task's CNode, or `None` if it is full.
pub fn allocate() -> Option<CPtr> {
    with(SlotBitmap::allocate)
}

/// Gives back a slot whose capability has been deleted (or was never made).
pub fn free(slot: CPtr) {
    with(|bitmap| bitmap.free(slot));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_handed_out_lowest_first_and_reused_after_free() {
        let mut slots = SlotBitmap::new(8, 20);
        assert!(slots.is_used(19) && !slots.is_used(20));
        assert_eq!(slots.allocate(), Some(20));
        assert_eq!(slots.allocate(), Some(21));
        slots.free(20);
        assert_eq!(slots.allocate(), Some(20));
        assert_eq!(slots.allocate(), Some(22));
        // 256 slots: 233 more fit, then none.
        let rest: Vec<_> = core::iter::from_fn(|| slots.allocate()).collect();
        assert_eq!(rest.len(), 256 - 23);
        assert_eq!(rest.last(), Some(&255));
        slots.free(300);
        assert_eq!(slots.allocate(), None);
        slots.free(100);
        assert_eq!(slots.allocate(), Some(100));
    }

    #[test]
    fn a_radix_12_cnode_uses_every_slot() {
        let mut slots = SlotBitmap::new(12, 16);
        assert_eq!(core::iter::from_fn(|| slots.allocate()).count(), 4096 - 16);
    }
}
