//! How the object layer reaches physical memory.
//!
//! Kernel objects live in physical memory obtained from Untyped. The object
//! layer touches it only through [`PhysicalMemory`], by address: on the
//! machine through the direct map, on the host (tests, fuzzing) through an
//! [`Arena`]. Every address handed to these functions was produced by the
//! kernel itself from a capability, never taken from user space unchecked.

use crate::addr::PhysAddr;

/// Word-granular access to physical memory holding kernel objects.
pub trait PhysicalMemory {
    /// Reads the 8-byte word at `address` (8-byte aligned).
    fn read(&self, address: PhysAddr) -> u64;
    /// Writes the 8-byte word at `address` (8-byte aligned).
    fn write(&mut self, address: PhysAddr, value: u64);
    /// Zeroes `bytes` bytes (a multiple of 8) from `address` (8-byte aligned).
    fn zero(&mut self, address: PhysAddr, bytes: u64);
    /// Copies `N` words from `from` to `to` (8-byte aligned, not overlapping).
    fn copy_words<const N: usize>(&mut self, from: PhysAddr, to: PhysAddr) {
        for i in 0..N as u64 {
            let word = self.read(from.offset(8 * i));
            self.write(to.offset(8 * i), word);
        }
    }
    /// Where physical address 0 would be in the kernel's view: physical
    /// address `p` is at `window() + p` (wrapping) for every address the
    /// object layer uses. The IPC fastpath reads and writes words through
    /// it, with the base in a register.
    fn window(&mut self) -> *mut u8;
    /// Drops cached translations of `address` in address space `asid` (all
    /// of the address space for `u64::MAX`) after a mapping was removed or
    /// changed.
    fn flush_translation(&mut self, asid: u16, address: u64);
    /// Reads `width` bytes (1, 2 or 4) from I/O port `port`.
    fn port_in(&mut self, port: u16, width: u8) -> u32;
    /// Writes the low `width` bytes (1, 2 or 4) of `value` to I/O port `port`.
    fn port_out(&mut self, port: u16, width: u8, value: u32);
    /// Routes interrupt line `line` to its vector with the given trigger
    /// mode and polarity, masked.
    fn irq_configure(&mut self, line: u8, level: bool, active_low: bool);
    /// Masks or unmasks interrupt line `line`.
    fn irq_mask(&mut self, line: u8, masked: bool);
    /// VMX: makes the 4 KiB at `vmcs` a VMCS with revision identifier
    /// `revision` and a clear launch state (VMCLEAR).
    fn vmcs_init(&mut self, vmcs: PhysAddr, revision: u32);
    /// VMX: the VMCS at `vmcs` goes away: the CPU must keep nothing of it
    /// (VMCLEAR writes back and forgets any cached copy).
    fn vmcs_release(&mut self, vmcs: PhysAddr);
    /// VMX: field `field` (an SDM appendix B encoding) of the VMCS at `vmcs`.
    fn vmcs_read(&self, vmcs: PhysAddr, field: u32) -> u64;
    /// VMX: writes field `field` of the VMCS at `vmcs`.
    fn vmcs_write(&mut self, vmcs: PhysAddr, field: u32, value: u64);
}

/// Physical memory through the kernel's direct map.
#[derive(Debug, Clone, Copy)]
pub struct DirectMapMemory {
    map: crate::addr::DirectMap,
    /// Whether CR4.PCIDE is on: each ASID is then the PCID of its address
    /// space, and the TLB keeps entries of several address spaces.
    pcid: bool,
    /// With PCIDs: which ASIDs' TLB entries may be stale.
    stale: StaleAsids,
}

/// ASIDs whose TLB entries may be stale because a mapping was removed
/// while another address space was current (only with PCIDs: without
/// them every CR3 load flushes). The next switch to such an ASID loads
/// CR3 without the no-flush bit, which flushes that PCID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleAsids([u64; 64]);

/// CR3 bit 63 with CR4.PCIDE: keep the new PCID's TLB entries (SDM vol. 3A §4.10.4.1).
pub const CR3_NO_FLUSH: u64 = 1 << 63;

impl StaleAsids {
    /// None stale.
    pub const fn new() -> Self {
        Self([0; 64])
    }

    /// Marks `asid` (its 12 bits) stale.
    pub fn mark(&mut self, asid: u16) {
        let asid = asid & 0xfff;
        self.0[usize::from(asid / 64)] |= 1 << (asid % 64);
    }

    /// The CR3 value that switches to `pml4` with PCID `asid`, flushing
    /// that PCID if it was stale (and clearing the mark).
    pub fn cr3_for(&mut self, pml4: PhysAddr, asid: u16) -> u64 {
        let asid = asid & 0xfff;
        let (word, bit) = (usize::from(asid / 64), 1u64 << (asid % 64));
        let stale = self.0[word] & bit != 0;
        self.0[word] &= !bit;
        pml4.get() | u64::from(asid) | if stale { 0 } else { CR3_NO_FLUSH }
    }
}

impl Default for StaleAsids {
    fn default() -> Self {
        Self::new()
    }
}

impl DirectMapMemory {
    /// Memory seen through `map`.
    ///
    /// # Safety
    /// `map` must map all physical memory the object layer will be given
    /// addresses of (every Untyped region), read-write.
    pub const unsafe fn new(map: crate::addr::DirectMap) -> Self {
        Self { map, pcid: false, stale: StaleAsids::new() }
    }

    /// Records that CR4.PCIDE is on (see [`crate::arch::x86_64::cpu::enable_pcid`]).
    pub fn use_pcids(&mut self) {
        self.pcid = true;
    }

    /// The stale-PCID bitmap (one bit per ASID), or null without PCIDs.
    pub fn stale_asids(&mut self) -> *mut u64 {
        if self.pcid { self.stale.0.as_mut_ptr() } else { core::ptr::null_mut() }
    }

    /// The CR3 value that switches to the address space `pml4` with `asid`:
    /// with PCIDs, the ASID is the PCID, and the TLB entries of that PCID
    /// are kept unless they may be stale.
    pub fn cr3_for(&mut self, pml4: PhysAddr, asid: u16) -> u64 {
        if self.pcid { self.stale.cr3_for(pml4, asid) } else { pml4.get() }
    }

    /// What `cr3_for` returns, without the no-flush bit or a stale mark
    /// cleared (the IPC fastpath adds both).
    pub fn cr3_base(&self, pml4: PhysAddr, asid: u16) -> u64 {
        pml4.get() | if self.pcid { u64::from(asid & 0xfff) } else { 0 }
    }
}

impl PhysicalMemory for DirectMapMemory {
    fn read(&self, address: PhysAddr) -> u64 {
        // SAFETY: the direct map covers every address the object layer uses
        // (constructor precondition); addresses come from capabilities the
        // kernel created, are 8-byte aligned and name kernel-owned memory.
        // Plain (not volatile) accesses suffice: the hardware reads these
        // words (page tables, VMCBs) only at an `asm!` block (MOV CR3,
        // INVLPG, VMRUN), which the compiler treats as reading all memory.
        unsafe { self.map.to_virtual(address).as_mut_ptr::<u64>().read() }
    }

    fn write(&mut self, address: PhysAddr, value: u64) {
        // SAFETY: as for `read`.
        unsafe { self.map.to_virtual(address).as_mut_ptr::<u64>().write(value) }
    }

    fn zero(&mut self, address: PhysAddr, bytes: u64) {
        // SAFETY: as for `read`; the range lies inside one object or Untyped.
        unsafe { core::ptr::write_bytes(self.map.to_virtual(address).as_mut_ptr::<u8>(), 0, bytes as usize) }
    }

    fn copy_words<const N: usize>(&mut self, from: PhysAddr, to: PhysAddr) {
        let from = self.map.to_virtual(from).as_mut_ptr::<[u64; N]>();
        let to = self.map.to_virtual(to).as_mut_ptr::<[u64; N]>();
        // SAFETY: as for `read` and `write`: both ranges are kernel-owned
        // objects the direct map covers; they do not overlap (precondition).
        unsafe { to.write(from.read()) }
    }

    fn window(&mut self) -> *mut u8 {
        self.map.to_virtual(PhysAddr(0)).as_mut_ptr()
    }

    fn flush_translation(&mut self, asid: u16, address: u64) {
        use x86::controlregs::{cr3, cr3_write};
        // Without PCIDs every CR3 load drops the user translations, so only
        // the current address space can hold stale ones. With PCIDs, an
        // address space that is not current is marked, and flushed when it
        // is next switched to (`cr3_for`). For the current one: INVLPG for
        // one page (of any size; Intel SDM vol. 3A §4.10.4.1), a CR3 load
        // without the no-flush bit for all of it.
        // SAFETY: reading CR3 has no side effects.
        let current = unsafe { cr3() };
        if self.pcid && current & 0xfff != u64::from(asid) {
            self.stale.mark(asid);
            return;
        }
        // SAFETY: invalidating translations has no effect beyond making
        // the next access walk the page tables again; CR3 is reloaded with
        // its own value (bit 63 clear: flush this PCID).
        unsafe {
            if address == u64::MAX {
                cr3_write(current & !CR3_NO_FLUSH);
            } else {
                x86::tlb::flush(address as usize);
            }
        }
    }

    fn port_in(&mut self, port: u16, width: u8) -> u32 {
        // SAFETY: the port lies in a range an I/O-port capability grants
        // (decode checked it), never one the kernel keeps for itself.
        unsafe { crate::arch::x86_64::port::read(port, width) }
    }

    fn port_out(&mut self, port: u16, width: u8, value: u32) {
        // SAFETY: as for `port_in`.
        unsafe { crate::arch::x86_64::port::write(port, width, value) }
    }

    fn irq_configure(&mut self, line: u8, level: bool, active_low: bool) {
        if let Some(apic) = crate::arch::x86_64::ioapic::get() {
            apic.configure(line, level, active_low);
        }
    }

    fn irq_mask(&mut self, line: u8, masked: bool) {
        if let Some(apic) = crate::arch::x86_64::ioapic::get() {
            apic.set_masked(line, masked);
        }
    }

    fn vmcs_init(&mut self, vmcs: PhysAddr, revision: u32) {
        self.write(vmcs, u64::from(revision));
        crate::arch::x86_64::vmx::clear(vmcs.get());
    }

    fn vmcs_release(&mut self, vmcs: PhysAddr) {
        crate::arch::x86_64::vmx::clear(vmcs.get());
    }

    fn vmcs_read(&self, vmcs: PhysAddr, field: u32) -> u64 {
        crate::arch::x86_64::vmx::read(vmcs.get(), field)
    }

    fn vmcs_write(&mut self, vmcs: PhysAddr, field: u32, value: u64) {
        crate::arch::x86_64::vmx::write(vmcs.get(), field, value);
    }
}

/// Host-side physical memory: a vector of words standing in for
/// `[base, base + size)`. Out-of-range access is a kernel bug and panics.
#[cfg(not(strata_baremetal))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arena {
    base: u64,
    words: alloc::vec::Vec<u64>,
    /// Translation flushes requested, as (ASID, address), for tests.
    pub flushes: alloc::vec::Vec<(u16, u64)>,
    /// A simulated I/O-port space (a byte per port, little-endian across
    /// wider accesses), for tests.
    pub ports: alloc::collections::BTreeMap<u16, u8>,
    /// Simulated interrupt lines: (level, active low, masked) by line.
    pub irq_lines: alloc::collections::BTreeMap<u8, (bool, bool, bool)>,
    /// Simulated VMCS fields, by (VMCS, encoding).
    pub vmcs: alloc::collections::BTreeMap<(u64, u32), u64>,
    /// VMCSs released, in order, for tests.
    pub vmcs_released: alloc::vec::Vec<u64>,
}

#[cfg(not(strata_baremetal))]
impl Arena {
    /// `bytes` bytes of zeroed memory at physical `base`.
    pub fn new(base: u64, bytes: u64) -> Self {
        Self {
            base,
            words: alloc::vec![0; (bytes / 8) as usize],
            flushes: alloc::vec::Vec::new(),
            ports: alloc::collections::BTreeMap::new(),
            irq_lines: alloc::collections::BTreeMap::new(),
            vmcs: alloc::collections::BTreeMap::new(),
            vmcs_released: alloc::vec::Vec::new(),
        }
    }

    fn index(&self, address: PhysAddr) -> usize {
        let offset = address.get().checked_sub(self.base).expect("address below the arena");
        assert!(offset.is_multiple_of(8), "misaligned word access at {address}");
        (offset / 8) as usize
    }
}

#[cfg(not(strata_baremetal))]
impl PhysicalMemory for Arena {
    fn read(&self, address: PhysAddr) -> u64 {
        self.words[self.index(address)]
    }

    fn write(&mut self, address: PhysAddr, value: u64) {
        let index = self.index(address);
        self.words[index] = value;
    }

    fn zero(&mut self, address: PhysAddr, bytes: u64) {
        let start = self.index(address);
        self.words[start..start + (bytes / 8) as usize].fill(0);
    }

    fn window(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast::<u8>().wrapping_sub(self.base as usize)
    }

    fn flush_translation(&mut self, asid: u16, address: u64) {
        self.flushes.push((asid, address));
    }

    fn port_in(&mut self, port: u16, width: u8) -> u32 {
        (0..width).rev().fold(0, |value, byte| {
            let at = port.wrapping_add(u16::from(byte));
            value << 8 | u32::from(self.ports.get(&at).copied().unwrap_or(0))
        })
    }

    fn port_out(&mut self, port: u16, width: u8, value: u32) {
        for byte in 0..width {
            self.ports.insert(port.wrapping_add(u16::from(byte)), (value >> (8 * byte)) as u8);
        }
    }

    fn irq_configure(&mut self, line: u8, level: bool, active_low: bool) {
        self.irq_lines.insert(line, (level, active_low, true));
    }

    fn irq_mask(&mut self, line: u8, masked: bool) {
        if let Some(state) = self.irq_lines.get_mut(&line) {
            state.2 = masked;
        }
    }

    fn vmcs_init(&mut self, vmcs: PhysAddr, revision: u32) {
        self.write(vmcs, u64::from(revision));
        self.vmcs.retain(|&(at, _), _| at != vmcs.get());
    }

    fn vmcs_release(&mut self, vmcs: PhysAddr) {
        self.vmcs.retain(|&(at, _), _| at != vmcs.get());
        self.vmcs_released.push(vmcs.get());
    }

    fn vmcs_read(&self, vmcs: PhysAddr, field: u32) -> u64 {
        self.vmcs.get(&(vmcs.get(), field)).copied().unwrap_or(0)
    }

    fn vmcs_write(&mut self, vmcs: PhysAddr, field: u32, value: u64) {
        self.vmcs.insert((vmcs.get(), field), value);
    }
}

#[cfg(test)]
mod tests {
    use super::{CR3_NO_FLUSH, StaleAsids};
    use crate::addr::PhysAddr;

    #[test]
    fn a_stale_asid_is_flushed_once_at_its_next_switch() {
        let mut stale = StaleAsids::new();
        let pml4 = PhysAddr(0x12_3000);
        assert_eq!(stale.cr3_for(pml4, 7), 0x12_3007 | CR3_NO_FLUSH, "clean: entries kept");
        stale.mark(7);
        stale.mark(4095);
        assert_eq!(stale.cr3_for(pml4, 7), 0x12_3007, "stale: this switch flushes");
        assert_eq!(stale.cr3_for(pml4, 7), 0x12_3007 | CR3_NO_FLUSH, "the mark is cleared");
        assert_eq!(stale.cr3_for(pml4, 8), 0x12_3008 | CR3_NO_FLUSH, "other ASIDs unaffected");
        assert_eq!(stale.cr3_for(pml4, 4095), 0x12_3fff, "the last ASID");
    }
}
