//! Kernel objects and capabilities, after seL4.
//!
//! All authority is a [`Capability`] in a slot of a CNode. Objects are made
//! by retyping Untyped memory; every capability records where it came from
//! in the *derivation tree*, kept as in seL4 as a doubly linked list of
//! slots in pre-order (the "mapping database", MDB): a capability's
//! descendants are the run of entries right after it for which it
//! [`is a parent`](ObjectSpace::is_parent_of). Revoking a capability deletes
//! that run.
//!
//! Everything here is plain Rust over [`PhysicalMemory`], so it runs on the
//! host against an [`memory::Arena`] (tests, fuzzing) exactly as it runs on
//! the machine. Operations are split seL4-style into a *decode* step that
//! checks everything and changes nothing, and a *perform* step that cannot
//! fail (apart from running out of its preemption budget, after which the
//! same operation is simply continued).

pub mod cap;
pub mod cnode;
pub mod cspace;
pub mod delete;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod ioport;
pub mod ipc;
pub mod irq;
pub mod memory;
#[cfg(any(test, feature = "fuzzing"))]
pub mod model;
pub mod tcb;
pub mod untyped;
pub mod vcpu;
pub mod vmx;
pub mod vspace;

#[cfg(test)]
mod ipc_tests;
#[cfg(test)]
mod tcb_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vcpu_tests;
#[cfg(test)]
mod vspace_tests;

use strata_abi::object::SLOT_SIZE_BITS;

use crate::addr::PhysAddr;
pub use cap::Capability;
pub use memory::PhysicalMemory;

/// Bytes in one slot: two capability words and two MDB words.
pub const SLOT_BYTES: u64 = 1 << SLOT_SIZE_BITS;

/// The address of a capability slot (32-byte aligned, never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(pub PhysAddr);

impl Slot {
    /// Slot `index` of the CNode whose slot array starts at `object`.
    pub const fn in_cnode(object: PhysAddr, index: u64) -> Self {
        Self(PhysAddr(object.get() + index * SLOT_BYTES))
    }

    const fn word(self, n: u64) -> PhysAddr {
        PhysAddr(self.0.get() + 8 * n)
    }
}

/// A slot's place in the derivation tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MdbNode {
    /// The previous entry in pre-order.
    pub prev: Option<Slot>,
    /// The next entry in pre-order.
    pub next: Option<Slot>,
    /// Whether the capability can have children (see [`ObjectSpace::is_parent_of`]).
    pub revocable: bool,
    /// Whether this is the first capability with its badge: badged copies of
    /// it are its children, not its siblings.
    pub first_badged: bool,
}

const MDB_REVOCABLE: u64 = 1 << 0;
const MDB_FIRST_BADGED: u64 = 1 << 1;
const MDB_FLAGS: u64 = MDB_REVOCABLE | MDB_FIRST_BADGED;

impl MdbNode {
    fn encode(&self) -> [u64; 2] {
        let link = |slot: Option<Slot>| slot.map_or(0, |s| s.0.get());
        let flags = if self.revocable { MDB_REVOCABLE } else { 0 }
            | if self.first_badged { MDB_FIRST_BADGED } else { 0 };
        [link(self.next) | flags, link(self.prev)]
    }

    fn decode(words: [u64; 2]) -> Self {
        let link = |word: u64| match word & !MDB_FLAGS {
            0 => None,
            address => Some(Slot(PhysAddr(address))),
        };
        Self {
            next: link(words[0]),
            prev: link(words[1]),
            revocable: words[0] & MDB_REVOCABLE != 0,
            first_badged: words[0] & MDB_FIRST_BADGED != 0,
        }
    }
}

/// All kernel objects, reached through physical memory.
#[derive(Debug, Clone)]
pub struct ObjectSpace<M: PhysicalMemory> {
    /// The memory holding the objects.
    pub memory: M,
    /// The ASID pools, by the ASIDs' top bits.
    pub asid_table: [Option<PhysAddr>; vspace::ASID_POOLS],
    /// The kernel's PML4, whose upper half every new address space shares.
    pub kernel_pml4: Option<PhysAddr>,
    /// The run queues.
    pub scheduler: tcb::Scheduler,
    /// One bit per I/O port: whether an issued capability holds it.
    pub io_ports_issued: [u64; ioport::ISSUED_WORDS],
    /// Interrupt routing and the state of each device interrupt line.
    pub irqs: irq::IrqTable,
    /// Hardware virtualization, as set up at boot.
    pub virt: vcpu::VirtConfig,
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// The object space over `memory`.
    pub const fn new(memory: M) -> Self {
        Self {
            memory,
            asid_table: [None; vspace::ASID_POOLS],
            kernel_pml4: None,
            scheduler: tcb::Scheduler::new(),
            io_ports_issued: [0; ioport::ISSUED_WORDS],
            irqs: irq::IrqTable::new(),
            virt: vcpu::VirtConfig::none(),
        }
    }

    /// The capability in `slot`.
    pub fn cap(&self, slot: Slot) -> Capability {
        let words = self.slot_words(slot);
        // Only the kernel writes slots, always with `set_cap` from an
        // encodable capability: a corrupt slot is a kernel bug. Debug builds
        // (host tests, fuzzing) check each read for the canonical encoding,
        // a full re-encode; release builds read the fields. Reading a corrupt
        // slot as empty is the safe degradation.
        let decoded =
            if cfg!(debug_assertions) { Capability::decode(words) } else { Capability::decode_fields(words) };
        decoded.unwrap_or_else(|_| {
            debug_assert!(false, "corrupt capability {words:x?} in slot {:?}", slot);
            Capability::Null
        })
    }

    /// The two words of a slot, undecoded (see `cap::raw`).
    pub fn slot_words(&self, slot: Slot) -> [u64; 2] {
        [self.memory.read(slot.word(0)), self.memory.read(slot.word(1))]
    }

    /// Stores `cap` in `slot` (the MDB links are not touched).
    pub fn set_cap(&mut self, slot: Slot, cap: Capability) {
        // Capabilities are built by the kernel from checked values: an
        // unencodable one is a kernel bug, stored as an empty slot.
        let words = cap.encode().unwrap_or_else(|_| {
            debug_assert!(false, "unencodable capability {cap:?}");
            [0, 0]
        });
        self.memory.write(slot.word(0), words[0]);
        self.memory.write(slot.word(1), words[1]);
    }

    /// The derivation-tree node of `slot`.
    pub fn mdb(&self, slot: Slot) -> MdbNode {
        MdbNode::decode([self.memory.read(slot.word(2)), self.memory.read(slot.word(3))])
    }

    /// Stores the derivation-tree node of `slot`.
    pub fn set_mdb(&mut self, slot: Slot, node: MdbNode) {
        let [next, prev] = node.encode();
        self.memory.write(slot.word(2), next);
        self.memory.write(slot.word(3), prev);
    }

    /// Changes the derivation-tree node of `slot` with `change`, if there is a slot.
    fn update_mdb(&mut self, slot: Option<Slot>, change: impl FnOnce(&mut MdbNode)) {
        if let Some(slot) = slot {
            let mut node = self.mdb(slot);
            change(&mut node);
            self.set_mdb(slot, node);
        }
    }

    /// Puts a capability created at boot into an empty slot, with no parent.
    pub fn insert_root(&mut self, slot: Slot, cap: Capability) {
        debug_assert!(self.cap(slot).is_null());
        self.set_cap(slot, cap);
        self.set_mdb(slot, MdbNode { prev: None, next: None, revocable: true, first_badged: true });
    }

    /// Whether `a` and `b` name overlapping memory in the sense of the
    /// derivation tree: `b` lies within the Untyped `a`, or both name the
    /// same object.
    pub fn same_region_as(a: &Capability, b: &Capability) -> bool {
        match (a, b) {
            (Capability::Untyped { .. }, _) => match (a.region(), b.region()) {
                (Some((a_base, a_size)), Some((b_base, b_size))) => {
                    a_base <= b_base && b_base.get() + b_size <= a_base.get() + a_size
                }
                _ => false,
            },
            (Capability::Endpoint { object: x, .. }, Capability::Endpoint { object: y, .. })
            | (Capability::Notification { object: x, .. }, Capability::Notification { object: y, .. })
            | (Capability::Tcb { object: x }, Capability::Tcb { object: y }) => x == y,
            (
                Capability::CNode { object: x, radix: rx, .. },
                Capability::CNode { object: y, radix: ry, .. },
            ) => x == y && rx == ry,
            (
                Capability::Frame { object: x, size: sx, .. },
                Capability::Frame { object: y, size: sy, .. },
            ) => x == y && sx == sy,
            (
                Capability::PageTable { object: x, level: lx, .. },
                Capability::PageTable { object: y, level: ly, .. },
            ) => x == y && lx == ly,
            (Capability::Pml4 { object: x, .. }, Capability::Pml4 { object: y, .. })
            | (Capability::GuestSpace { object: x, .. }, Capability::GuestSpace { object: y, .. })
            | (Capability::Vcpu { object: x }, Capability::Vcpu { object: y })
            | (Capability::AsidPool { object: x, .. }, Capability::AsidPool { object: y, .. }) => x == y,
            (Capability::AsidControl, Capability::AsidControl)
            | (Capability::IoPortControl, Capability::IoPortControl | Capability::IoPort { .. })
            | (Capability::IrqControl, Capability::IrqControl | Capability::IrqHandler { .. }) => true,
            (Capability::IrqHandler { line: a }, Capability::IrqHandler { line: b }) => a == b,
            (Capability::IoPort { first: a, last: b }, Capability::IoPort { first: c, last: d }) => {
                a == c && b == d
            }
            _ => false,
        }
    }

    /// Whether `a` and `b` name the same object (Untyped capabilities are
    /// never the same object as anything: each is its region's only capability).
    pub fn same_object_as(a: &Capability, b: &Capability) -> bool {
        // A control capability is the parent of every I/O-port or IRQ
        // handler capability, not the same object as any.
        let control_and_range = matches!(
            (a, b),
            (Capability::IoPortControl, Capability::IoPort { .. })
                | (Capability::IoPort { .. }, Capability::IoPortControl)
                | (Capability::IrqControl, Capability::IrqHandler { .. })
                | (Capability::IrqHandler { .. }, Capability::IrqControl)
        );
        !matches!(a, Capability::Untyped { .. }) && !control_and_range && Self::same_region_as(a, b)
    }

    /// seL4's `isMDBParentOf`: whether the capability in `b` is a child of
    /// the one in `a` (given that `b` follows `a` in the list).
    pub fn is_parent_of(&self, a: Slot, b: Slot) -> bool {
        let a_node = self.mdb(a);
        if !a_node.revocable {
            return false;
        }
        let (a_cap, b_cap) = (self.cap(a), self.cap(b));
        if !Self::same_region_as(&a_cap, &b_cap) {
            return false;
        }
        match a_cap.badge() {
            // An unbadged endpoint or notification is the parent of all
            // capabilities to its object; a badged one only of copies with
            // its badge that are not themselves the first of their badge.
            Some(0) | None => true,
            Some(badge) => b_cap.badge() == Some(badge) && !self.mdb(b).first_badged,
        }
    }

    /// Whether the capability in `slot` has children.
    pub fn has_children(&self, slot: Slot) -> bool {
        self.mdb(slot).next.is_some_and(|next| self.is_parent_of(slot, next))
    }

    /// Whether the capability in `slot` is the last one to its object
    /// (capabilities to one object are adjacent in the list).
    pub fn is_final(&self, slot: Slot) -> bool {
        let cap = self.cap(slot);
        let node = self.mdb(slot);
        let shares = |other: Option<Slot>| other.is_some_and(|o| Self::same_object_as(&cap, &self.cap(o)));
        !shares(node.prev) && !shares(node.next)
    }

    /// Inserts `cap`, derived from the capability in `parent`, into the
    /// empty slot `slot`, right after `parent` (seL4 `cteInsert`).
    pub fn insert_derived(&mut self, parent: Slot, slot: Slot, cap: Capability) {
        let source = self.cap(parent);
        // A derived capability can have children of its own only where it
        // is a new authority: a new badge, or an Untyped.
        let revocable = match (&cap, &source) {
            (Capability::Untyped { .. }, _) => true,
            (Capability::Endpoint { badge: new, .. }, Capability::Endpoint { badge: old, .. })
            | (Capability::Notification { badge: new, .. }, Capability::Notification { badge: old, .. }) => {
                new != old
            }
            _ => false,
        };
        self.link_after(parent, slot, cap, revocable);
    }

    /// Inserts the capability to a newly created object after its Untyped.
    pub fn insert_new_object(&mut self, untyped: Slot, slot: Slot, cap: Capability) {
        self.link_after(untyped, slot, cap, true);
    }

    fn link_after(&mut self, parent: Slot, slot: Slot, cap: Capability, revocable: bool) {
        let next = self.mdb(parent).next;
        self.set_cap(slot, cap);
        self.set_mdb(slot, MdbNode { prev: Some(parent), next, revocable, first_badged: revocable });
        self.update_mdb(Some(parent), |node| node.next = Some(slot));
        self.update_mdb(next, |node| node.prev = Some(slot));
    }

    /// Moves the capability in `from` to the empty slot `to`, replacing it
    /// with `cap` (same object; mutate may change guard or badge), keeping
    /// its place in the tree (seL4 `cteMove`).
    pub fn move_cap(&mut self, from: Slot, to: Slot, cap: Capability) {
        let node = self.mdb(from);
        self.set_cap(to, cap);
        self.set_mdb(to, node);
        self.set_cap(from, Capability::Null);
        self.set_mdb(from, MdbNode::default());
        self.update_mdb(node.prev, |prev| prev.next = Some(to));
        self.update_mdb(node.next, |next| next.prev = Some(to));
    }

    /// Exchanges the contents (capability and tree position) of two
    /// occupied slots.
    pub fn swap(&mut self, a: Slot, b: Slot) {
        if a == b {
            return;
        }
        let (cap_a, cap_b) = (self.cap(a), self.cap(b));
        let (node_a, node_b) = (self.mdb(a), self.mdb(b));
        // Re-point each node's neighbours, taking care of a and b being
        // neighbours of each other.
        let rename = |s: Option<Slot>| match s {
            Some(s) if s == a => Some(b),
            Some(s) if s == b => Some(a),
            other => other,
        };
        let new_a = MdbNode { prev: rename(node_b.prev), next: rename(node_b.next), ..node_b };
        let new_b = MdbNode { prev: rename(node_a.prev), next: rename(node_a.next), ..node_a };
        self.set_cap(a, cap_b);
        self.set_cap(b, cap_a);
        self.set_mdb(a, new_a);
        self.set_mdb(b, new_b);
        let outside = |s: &Slot| *s != a && *s != b;
        for (slot, node) in [(a, new_a), (b, new_b)] {
            self.update_mdb(node.prev.filter(outside), |prev| prev.next = Some(slot));
            self.update_mdb(node.next.filter(outside), |next| next.prev = Some(slot));
        }
    }

    /// Takes `slot` out of the tree and empties it.
    pub fn remove(&mut self, slot: Slot) {
        let node = self.mdb(slot);
        self.update_mdb(node.prev, |prev| prev.next = node.next);
        self.update_mdb(node.next, |next| {
            next.prev = node.prev;
            // If the first capability of a badge goes, the next one (its
            // copy, if any) becomes the first: otherwise it would turn into
            // a child of an earlier, unrelated capability with that badge.
            next.first_badged |= node.first_badged;
        });
        self.set_cap(slot, Capability::Null);
        self.set_mdb(slot, MdbNode::default());
    }
}
