//! Address spaces: paging structures and frames as capability objects
//! (after seL4's x86-64 model; Intel SDM vol. 3A §4.5, AMD APM vol. 2 §5.3).
//!
//! An address space is a PML4 object with an ASID. The ASID is also the
//! x86 PCID, and it comes from an ASID pool created through the ASID control
//! capability. Page tables, page directories and PDPTs are installed
//! with `PageTableMap`, frames with `FrameMap`. Each frame or table capability
//! records where it is mapped as (ASID, address). Nothing else refers to a
//! mapping, so a capability is mapped at most once.
//!
//! Unmapping, explicitly or when a capability is deleted, looks the
//! address space up again through the ASID table and walks it from the
//! PML4. It clears the entry only if it still points at the object. A
//! mapping record can outlive its address space or its intermediate tables
//! (the PML4 or a table was deleted first). Those records then find nothing
//! and write nothing, so memory that has been reused is never touched.
//!
//! Mappings in a thread's address space are never writable and executable at once.
//!
//! A GuestSpace is the same four-level structure for guest-physical
//! addresses, with an ASID from the same pools (its pool entry is tagged
//! with bit 0). Tables are installed in it exactly as in a PML4: an
//! intermediate entry allowing everything is 0x7 in both the nested-paging
//! format (P, R/W, U/S: AMD APM vol. 2 §15.25.5) and the EPT format (R, W,
//! X: Intel SDM vol. 3C §29.3.2). Only frame entries differ, and
//! [`frame_entry`] makes them from one description. Removing a guest
//! mapping leaves no VCPU the owner of its hardware tag's cached
//! translations (`VirtConfig::tag_owner`), so every VCPU's next entry
//! flushes them.

use strata_abi::error::{InvocationError, LookupFailure};
use strata_abi::invocation::Label;
use strata_abi::object::{ASID_COUNT, ASID_POOL_SIZE, Rights, USER_TOP, VmAttributes};

use super::cap::{FrameSize, Mapping, TableLevel};
use super::{Capability, ObjectSpace, PhysicalMemory, Slot};
use crate::addr::PhysAddr;
use crate::arch::x86_64::paging::{Level, PageTableEntry, PteFlags};

/// ASID pools deleted since boot. Their PML4s keep their ASIDs in the
/// capabilities that name them, and the ASIDs may be handed out again: a
/// value the IPC fastpath cached before a deletion is not used after it.
pub static ASID_EPOCH: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Number of ASID pools the ASID table can hold.
pub const ASID_POOLS: usize = (ASID_COUNT / ASID_POOL_SIZE) as usize;

/// A checked address-space invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VSpaceInvocation {
    /// Write `entry` at `at` and record the mapping in the capability in `slot`.
    Map {
        /// The table or frame capability's slot.
        slot: Slot,
        /// The capability with its new mapping.
        cap: Capability,
        /// Physical address of the paging-structure entry to write.
        at: PhysAddr,
        /// The entry.
        entry: PageTableEntry,
    },
    /// Remove the mapping of the table or frame in `slot`.
    Unmap {
        /// The capability's slot.
        slot: Slot,
    },
    /// Reply with the frame's physical address.
    GetAddress {
        /// The address.
        address: PhysAddr,
    },
    /// Turn the 4 KiB Untyped in `untyped` into ASID pool `index`.
    MakePool {
        /// The Untyped's slot.
        untyped: Slot,
        /// Where the pool capability goes.
        destination: Slot,
        /// ASID table index (pool `index` holds ASIDs `index * 512..`).
        index: usize,
    },
    /// Give the PML4 in `slot` the ASID `asid`.
    Assign {
        /// The PML4 capability's slot.
        slot: Slot,
        /// The ASID.
        asid: u16,
        /// The pool entry to fill.
        at: PhysAddr,
    },
}

/// Tag of a GuestSpace in an ASID pool entry.
const GUEST_TAG: u64 = 1;

/// The entry mapping a frame at `object` with `rights` (READ is always
/// among them) and `attributes`: an x86 page-table entry, which is also
/// the nested-paging format (where every guest access is a user access),
/// or with `ept` an EPT entry.
pub fn frame_entry(
    object: PhysAddr,
    rights: Rights,
    attributes: VmAttributes,
    large: bool,
    ept: bool,
) -> PageTableEntry {
    let write = rights.contains(Rights::WRITE);
    let execute = attributes.contains(VmAttributes::EXECUTABLE);
    let large_bit = if large { 1 << 7 } else { 0 };
    match ept {
        true => {
            // EPT: R, W, X in bits 0-2, memory type in 3-5 (UC 0, WT 4, WB 6).
            let memory_type = if attributes.contains(VmAttributes::CACHE_DISABLED) {
                0
            } else if attributes.contains(VmAttributes::WRITE_THROUGH) {
                4
            } else {
                6
            };
            let bits = 1 | u64::from(write) << 1 | u64::from(execute) << 2 | memory_type << 3 | large_bit;
            PageTableEntry::from_raw(object.get() | bits)
        }
        false => {
            let mut flags = PteFlags::PRESENT | PteFlags::USER;
            flags.set(PteFlags::WRITABLE, write);
            flags.set(PteFlags::NO_EXECUTE, !execute);
            flags.set(PteFlags::WRITE_THROUGH, attributes.contains(VmAttributes::WRITE_THROUGH));
            flags.set(PteFlags::CACHE_DISABLE, attributes.contains(VmAttributes::CACHE_DISABLED));
            flags.set(PteFlags::HUGE, large);
            PageTableEntry::new(object.get(), flags)
        }
    }
}

/// Index of `address` at paging `level`.
fn index_at(level: Level, address: u64) -> u64 {
    level.index_of(address) as u64
}

/// The paging level whose entries map a frame of `size`.
fn frame_level(size: FrameSize) -> Level {
    if size == FrameSize::Large { Level::Pd } else { Level::Pt }
}

/// The paging level whose entries install a table of `level`.
fn parent_level(level: TableLevel) -> Level {
    match level {
        TableLevel::Pdpt => Level::Pml4,
        TableLevel::PageDirectory => Level::Pdpt,
        TableLevel::PageTable => Level::Pd,
    }
}

/// Address bits below `level`'s entries (for lookup-failure reports).
fn bits_below(level: Level) -> u8 {
    (12 + 9 * level as u32) as u8
}

impl<M: PhysicalMemory> ObjectSpace<M> {
    /// The root table `asid` names, if any, and whether it is a GuestSpace.
    pub fn address_space_root(&self, asid: u16) -> Option<(PhysAddr, bool)> {
        let asid = u32::from(asid);
        if asid == 0 || asid >= ASID_COUNT {
            return None;
        }
        let pool = self.asid_table[(asid / ASID_POOL_SIZE) as usize]?;
        match self.memory.read(pool.offset(8 * u64::from(asid % ASID_POOL_SIZE))) {
            0 => None,
            entry => Some((PhysAddr(entry & !GUEST_TAG), entry & GUEST_TAG != 0)),
        }
    }

    /// The root table (PML4 or GuestSpace) that `asid` names, if any.
    pub fn pml4_of(&self, asid: u16) -> Option<PhysAddr> {
        self.address_space_root(asid).map(|(root, _)| root)
    }

    /// Forgets cached translations of `address` in the space with `asid`
    /// (`u64::MAX`: all of them).
    fn flush_space(&mut self, asid: u16, address: u64) {
        match self.address_space_root(asid) {
            Some((_, true)) => self.virt.tag_owner = [PhysAddr(0); super::vcpu::TAG_SLOTS],
            _ => self.memory.flush_translation(asid, address),
        }
    }

    fn entry(&self, table: PhysAddr, index: u64) -> PageTableEntry {
        PageTableEntry::from_raw(self.memory.read(table.offset(8 * index)))
    }

    /// The address of the entry for `address` in the table at `target`
    /// level, walking down from `pml4` through present, non-huge entries.
    fn walk(&self, pml4: PhysAddr, address: u64, target: Level) -> Result<PhysAddr, LookupFailure> {
        let mut table = pml4;
        let mut level = Level::Pml4;
        while level != target {
            let entry = self.entry(table, index_at(level, address));
            if !entry.is_present() || entry.flags().contains(PteFlags::HUGE) {
                return Err(LookupFailure::MissingCapability { bits_left: bits_below(level) });
            }
            table = PhysAddr(entry.address());
            // `target` is below `level` (the loop stops at it), so there is a next level.
            level = level.next().unwrap_or(Level::Pt);
        }
        Ok(table.offset(8 * index_at(target, address)))
    }

    /// The live address space `vspace` names (a PML4 or a GuestSpace),
    /// with its ASID and whether it is a GuestSpace.
    fn address_space(&self, vspace: Option<Capability>) -> Result<(PhysAddr, u16, bool), InvocationError> {
        let guest = matches!(vspace, Some(Capability::GuestSpace { .. }));
        match vspace {
            Some(
                Capability::Pml4 { object, asid: Some(asid) }
                | Capability::GuestSpace { object, asid: Some(asid) },
            ) if self.address_space_root(asid) == Some((object, guest)) => Ok((object, asid, guest)),
            _ => Err(InvocationError::InvalidCapability { index: 1 }),
        }
    }

    /// Decodes an invocation on a page table, frame, ASID control or ASID
    /// pool capability in `slot`. `extra` are the extra capabilities'
    /// slots, already looked up.
    pub fn decode_vspace(
        &self,
        slot: Slot,
        label: Label,
        words: &[u64],
        extra: &[Slot],
    ) -> Result<VSpaceInvocation, InvocationError> {
        let cap = self.cap(slot);
        let extra_cap = |n: usize| extra.get(n).map(|&s| self.cap(s));
        let word =
            |n: usize, needed: u8| words.get(n).copied().ok_or(InvocationError::TruncatedMessage { needed });
        match (cap, label) {
            (Capability::PageTable { object, level, mapping }, Label::PageTableMap) => {
                if mapping.is_some() {
                    return Err(InvocationError::InvalidCapability { index: 0 });
                }
                let (pml4, asid, _) = self.address_space(extra_cap(0))?;
                let address = word(0, 1)?;
                if address >= USER_TOP {
                    return Err(InvocationError::InvalidArgument { index: 0 });
                }
                let address = address & !(level.coverage() - 1);
                let at = self
                    .walk(pml4, address, parent_level(level))
                    .map_err(|failure| InvocationError::FailedLookup { source: false, failure })?;
                if PageTableEntry::from_raw(self.memory.read(at)).is_present() {
                    return Err(InvocationError::DeleteFirst);
                }
                // Intermediate entries allow everything; leaves restrict.
                let flags = PteFlags::PRESENT | PteFlags::WRITABLE | PteFlags::USER;
                let entry = PageTableEntry::new(object.get(), flags);
                let cap = Capability::PageTable { object, level, mapping: Some(Mapping { asid, address }) };
                Ok(VSpaceInvocation::Map { slot, cap, at, entry })
            }
            (Capability::PageTable { mapping, .. }, Label::PageTableUnmap) => {
                // The mapping is shared by all copies: only the last may undo it.
                if mapping.is_some() && !self.is_final(slot) {
                    return Err(InvocationError::RevokeFirst);
                }
                Ok(VSpaceInvocation::Unmap { slot })
            }
            (Capability::Frame { object, size, rights, device, mapping }, Label::FrameMap) => {
                let (pml4, asid, guest) = self.address_space(extra_cap(0))?;
                let address = word(0, 3)?;
                let requested = Rights::from_bits_truncate(word(1, 3)?);
                let attributes = VmAttributes::from_bits(word(2, 3)?)
                    .ok_or(InvocationError::InvalidArgument { index: 2 })?;
                if !address.is_multiple_of(size.bytes()) {
                    return Err(InvocationError::AlignmentError);
                }
                if address.checked_add(size.bytes()).is_none_or(|end| end > USER_TOP) {
                    return Err(InvocationError::InvalidArgument { index: 0 });
                }
                let granted = rights & requested & (Rights::READ | Rights::WRITE);
                if !granted.contains(Rights::READ) {
                    return Err(InvocationError::InvalidArgument { index: 1 });
                }
                // Guest memory is the guest's: its own page tables decide
                // what it may execute, so guest RAM may be both.
                if !guest && granted.contains(Rights::WRITE) && attributes.contains(VmAttributes::EXECUTABLE)
                {
                    return Err(InvocationError::InvalidArgument { index: 2 });
                }
                // A mapped capability may only be remapped in place (to change rights).
                if let Some(existing) = mapping {
                    if existing.asid != asid {
                        return Err(InvocationError::InvalidCapability { index: 1 });
                    }
                    if existing.address != address {
                        return Err(InvocationError::InvalidArgument { index: 0 });
                    }
                }
                let at = self
                    .walk(pml4, address, frame_level(size))
                    .map_err(|failure| InvocationError::FailedLookup { source: false, failure })?;
                let current = PageTableEntry::from_raw(self.memory.read(at));
                if current.is_present() && (mapping.is_none() || current.address() != object.get()) {
                    return Err(InvocationError::DeleteFirst);
                }
                let large = size == FrameSize::Large;
                let ept = guest && self.virt.backend == super::vcpu::Backend::Vmx;
                let entry = frame_entry(object, granted, attributes, large, ept);
                let mapped = Some(Mapping { asid, address });
                let cap = Capability::Frame { object, size, rights, device, mapping: mapped };
                Ok(VSpaceInvocation::Map { slot, cap, at, entry })
            }
            (Capability::Frame { .. }, Label::FrameUnmap) => Ok(VSpaceInvocation::Unmap { slot }),
            (Capability::Frame { object, .. }, Label::FrameGetAddress) => {
                Ok(VSpaceInvocation::GetAddress { address: object })
            }
            (Capability::AsidControl, Label::AsidControlMakePool) => {
                let untyped = *extra.first().ok_or(InvocationError::InvalidCapability { index: 1 })?;
                let Capability::Untyped { size_bits: 12, device: false, .. } = self.cap(untyped) else {
                    return Err(InvocationError::InvalidCapability { index: 1 });
                };
                if self.has_children(untyped) {
                    return Err(InvocationError::RevokeFirst);
                }
                let root = extra_cap(1).ok_or(InvocationError::InvalidCapability { index: 2 })?;
                let destination = self.lookup_destination(root, word(0, 2)?, word(1, 2)?)?;
                if !self.cap(destination).is_null() {
                    return Err(InvocationError::DeleteFirst);
                }
                let index =
                    self.asid_table.iter().position(Option::is_none).ok_or(InvocationError::DeleteFirst)?;
                Ok(VSpaceInvocation::MakePool { untyped, destination, index })
            }
            (Capability::AsidPool { object, first_asid }, Label::AsidPoolAssign) => {
                let pml4 = *extra.first().ok_or(InvocationError::InvalidCapability { index: 1 })?;
                let (Capability::Pml4 { asid: None, .. } | Capability::GuestSpace { asid: None, .. }) =
                    self.cap(pml4)
                else {
                    return Err(InvocationError::InvalidCapability { index: 1 });
                };
                // The pool must still be the one the ASID table names.
                if self.asid_table[usize::from(first_asid) / ASID_POOL_SIZE as usize] != Some(object) {
                    return Err(InvocationError::InvalidCapability { index: 0 });
                }
                let free = (0..u64::from(ASID_POOL_SIZE))
                    .filter(|&n| first_asid != 0 || n != 0) // ASID 0 is never handed out
                    .find(|&n| self.memory.read(object.offset(8 * n)) == 0)
                    .ok_or(InvocationError::DeleteFirst)?;
                Ok(VSpaceInvocation::Assign {
                    slot: pml4,
                    asid: first_asid + free as u16,
                    at: object.offset(8 * free),
                })
            }
            _ => Err(InvocationError::IllegalOperation),
        }
    }

    /// Performs a decoded address-space invocation.
    pub fn perform_vspace(&mut self, invocation: VSpaceInvocation) {
        match invocation {
            VSpaceInvocation::Map { slot, cap, at, entry } => {
                self.memory.write(at, entry.raw());
                if let Capability::Frame { mapping: Some(m), .. } = cap {
                    self.flush_space(m.asid, m.address);
                }
                self.set_cap(slot, cap);
            }
            VSpaceInvocation::Unmap { slot } => {
                let cap = self.cap(slot);
                self.unmap(&cap);
                let unmapped = match cap {
                    Capability::Frame { object, size, rights, device, .. } => {
                        Capability::Frame { object, size, rights, device, mapping: None }
                    }
                    Capability::PageTable { object, level, mapping } => {
                        // A table taken out starts empty when mapped again.
                        if mapping.is_some() {
                            self.memory.zero(object, 1 << 12);
                        }
                        Capability::PageTable { object, level, mapping: None }
                    }
                    other => other,
                };
                self.set_cap(slot, unmapped);
            }
            VSpaceInvocation::GetAddress { .. } => {}
            VSpaceInvocation::MakePool { untyped, destination, index } => {
                let Capability::Untyped { base, size_bits, device, .. } = self.cap(untyped) else { return };
                self.memory.zero(base, 1 << 12);
                self.insert_new_object(
                    untyped,
                    destination,
                    Capability::AsidPool { object: base, first_asid: (index as u32 * ASID_POOL_SIZE) as u16 },
                );
                self.set_cap(
                    untyped,
                    Capability::Untyped { base, size_bits, free_index: 1 << size_bits, device },
                );
                self.asid_table[index] = Some(base);
            }
            VSpaceInvocation::Assign { slot, asid, at } => match self.cap(slot) {
                Capability::Pml4 { object, .. } => {
                    self.memory.write(at, object.get());
                    self.set_cap(slot, Capability::Pml4 { object, asid: Some(asid) });
                }
                Capability::GuestSpace { object, .. } => {
                    self.memory.write(at, object.get() | GUEST_TAG);
                    self.set_cap(slot, Capability::GuestSpace { object, asid: Some(asid) });
                }
                _ => {}
            },
        }
    }

    /// Removes the mapping `cap` records, if it is still in place.
    fn unmap(&mut self, cap: &Capability) {
        let (object, mapping, level) = match *cap {
            Capability::Frame { object, size, mapping: Some(m), .. } => (object, m, frame_level(size)),
            Capability::PageTable { object, level, mapping: Some(m) } => (object, m, parent_level(level)),
            _ => return,
        };
        let Some(pml4) = self.pml4_of(mapping.asid) else { return };
        let Ok(at) = self.walk(pml4, mapping.address, level) else { return };
        let entry = PageTableEntry::from_raw(self.memory.read(at));
        if entry.is_present() && entry.address() == object.get() {
            self.memory.write(at, 0);
            // A frame is one TLB entry; a table may back many.
            let span = if matches!(cap, Capability::Frame { .. }) { mapping.address } else { u64::MAX };
            self.flush_space(mapping.asid, span);
        }
    }

    /// Releases what a deleted address-space capability holds: its mapping
    /// (every frame capability; the last capability of a table), its ASID
    /// (the last capability of a PML4), its place in the ASID table (the
    /// last capability of a pool).
    pub(super) fn finalise_vspace(&mut self, cap: &Capability, last: bool) {
        match *cap {
            Capability::Frame { .. } => self.unmap(cap),
            Capability::PageTable { .. } if last => self.unmap(cap),
            Capability::Pml4 { object, asid: Some(asid) }
            | Capability::GuestSpace { object, asid: Some(asid) }
                if last && self.pml4_of(asid) == Some(object) =>
            {
                self.flush_space(asid, u64::MAX);
                if let Some(pool) = self.asid_table[usize::from(asid) / ASID_POOL_SIZE as usize] {
                    self.memory.write(pool.offset(8 * u64::from(u32::from(asid) % ASID_POOL_SIZE)), 0);
                }
            }
            Capability::AsidPool { object, first_asid } if last => {
                let index = usize::from(first_asid) / ASID_POOL_SIZE as usize;
                if self.asid_table[index] == Some(object) {
                    self.empty_pool_spaces(first_asid);
                    self.asid_table[index] = None;
                }
            }
            _ => {}
        }
    }

    /// Before the pool from `first_asid` goes: once their ASIDs name
    /// nothing, no mapping in its spaces could be removed, and a frame
    /// could be freed while still mapped. Their user halves go now, so
    /// that they map nothing (seL4 stops using such a space instead).
    #[cold]
    fn empty_pool_spaces(&mut self, first_asid: u16) {
        ASID_EPOCH.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        for asid in first_asid..first_asid + ASID_POOL_SIZE as u16 {
            let Some((root, guest)) = self.address_space_root(asid) else { continue };
            self.memory.zero(root, if guest { 4096 } else { 2048 });
            self.flush_space(asid, u64::MAX);
        }
    }

    /// Copies the kernel's half of the address space into a new PML4.
    pub(super) fn init_pml4(&mut self, pml4: PhysAddr) {
        if let Some(kernel) = self.kernel_pml4 {
            for index in 256..512 {
                let entry = self.memory.read(kernel.offset(8 * index));
                self.memory.write(pml4.offset(8 * index), entry);
            }
        }
    }
}
