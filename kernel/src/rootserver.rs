//! Creating the root task: the first thread, from the `root` boot module.
//!
//! Everything is built through the object layer's own decode and perform
//! paths, as if a privileged user had invoked them: retype from a boot
//! Untyped, map with `FrameMap`/`PageTableMap`, configure the TCB. The
//! derivation tree and every mapping record are therefore exactly what
//! later invocations expect.
//!
//! The root task receives, in fixed slots (`abi::bootinfo::slot`): its
//! CNode, address space, TCB, ASID control, the first ASID pool, its IPC
//! buffer frame and the boot-info frame. Then come its image frames and
//! the Untypeds covering all other free memory, then the frames of the
//! boot modules. Each module is copied into its own frames and mapped
//! read-only from [`MODULES_ADDRESS`] on, with a guard page after each.
//! The boot-info page, mapped read-only at [`BOOT_INFO_ADDRESS`] (its
//! address is in RDI at entry), lists them.

use strata_abi::bootinfo::{self, BootInfo, ROOT_CNODE_RADIX, SlotRange, UntypedDescriptor, slot};
use strata_abi::elf::{self, ElfError};
use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::object::{ObjectType, Rights, USER_TOP};
use zerocopy::{FromZeros, IntoBytes};

use crate::addr::PhysAddr;
use crate::object::tcb::UserContext;
use crate::object::{Capability, ObjectSpace, PhysicalMemory, Slot};

pub use strata_abi::bootinfo::layout::{
    BOOT_INFO_ADDRESS, IPC_BUFFER_ADDRESS, MODULES_ADDRESS, STACK_PAGES, STACK_TOP,
};
/// Where the root task's image may lie.
pub const IMAGE_RANGE: core::ops::Range<u64> =
    strata_abi::bootinfo::layout::IMAGE_START..strata_abi::bootinfo::layout::IMAGE_END;

/// A boot module handed to the root task.
#[derive(Debug, Clone, Copy)]
pub struct Module<'a> {
    /// Its name in the boot archive.
    pub name: &'a str,
    /// Its bytes.
    pub bytes: &'a [u8],
}

/// Boot memory the root task's own objects need with these modules: its
/// image, stack, buffers and paging structures (within 2 MiB for any
/// image the kernel accepts today), plus a frame per module page and a
/// page table per 2 MiB of modules. As a power of two, in bits.
pub fn boot_memory_bits(image: &[u8], modules: &[Module<'_>]) -> u8 {
    let pages: u64 = modules.iter().map(|m| (m.bytes.len() as u64).div_ceil(4096) + 1).sum();
    let bytes = (2 << 20) + image.len() as u64 + pages * 4096 + pages.div_ceil(512) * 4096;
    bytes.next_power_of_two().trailing_zeros() as u8
}

/// Why the root task could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootTaskError {
    /// The root module is not an acceptable executable.
    Elf(ElfError),
    /// Building it failed (the boot Untyped is too small, or too many objects).
    Build(InvocationError),
    /// More image and module frames than fit the root CNode.
    TooLarge,
    /// More boot modules than the boot-info page describes.
    TooManyModules,
    /// A module name longer than `bootinfo::MODULE_NAME_LEN` bytes.
    ModuleName,
}

impl core::fmt::Display for RootTaskError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Elf(e) => write!(f, "root task: {e}"),
            Self::Build(e) => write!(f, "root task: building it failed: {e}"),
            Self::TooLarge => write!(f, "root task: image and modules too large for its CNode"),
            Self::TooManyModules => {
                write!(f, "more than {} boot modules besides the root task", bootinfo::MAX_MODULES)
            }
            Self::ModuleName => {
                write!(f, "a boot module name is longer than {} bytes", bootinfo::MODULE_NAME_LEN)
            }
        }
    }
}

impl From<InvocationError> for RootTaskError {
    fn from(error: InvocationError) -> Self {
        Self::Build(error)
    }
}

/// What was created.
#[derive(Debug, Clone, Copy)]
pub struct RootTask {
    /// The root thread's TCB.
    pub tcb: PhysAddr,
    /// Its entry point.
    pub entry: u64,
    /// Untypeds handed over.
    pub untypeds: u64,
}

/// Builds the root task in `space` from the ELF `image`.
///
/// `cnode` is where the root CNode goes (its size is `2^(ROOT_CNODE_RADIX + 5)`,
/// aligned to it); `boot_memory` is a free, size-aligned region of
/// `2^boot_bits` bytes for the task's own objects; `free` lists the rest of
/// free memory, which becomes the task's Untypeds.
pub fn create<M: PhysicalMemory>(
    space: &mut ObjectSpace<M>,
    image: &[u8],
    modules: &[Module<'_>],
    cnode: PhysAddr,
    boot_memory: (PhysAddr, u8),
    free: &mut dyn Iterator<Item = (u64, u64)>,
) -> Result<RootTask, RootTaskError> {
    let plan = elf::plan(image, IMAGE_RANGE).map_err(RootTaskError::Elf)?;
    if modules.len() > bootinfo::MAX_MODULES {
        return Err(RootTaskError::TooManyModules);
    }
    if modules.iter().any(|m| m.name.len() > bootinfo::MODULE_NAME_LEN) {
        return Err(RootTaskError::ModuleName);
    }
    let root = Capability::CNode {
        object: cnode,
        radix: ROOT_CNODE_RADIX,
        guard_size: 64 - ROOT_CNODE_RADIX,
        guard: 0,
    };
    space.memory.zero(cnode, 1 << (u32::from(ROOT_CNODE_RADIX) + 5));
    let at = |n: u64| Slot::in_cnode(cnode, n);
    space.insert_root(at(slot::CNODE), root);
    space.insert_root(at(slot::ASID_CONTROL), Capability::AsidControl);
    space.insert_root(at(slot::IO_PORT_CONTROL), Capability::IoPortControl);
    space.insert_root(at(slot::IRQ_CONTROL), Capability::IrqControl);
    // The task's own objects come from a boot Untyped kept in the last slot
    // while building; it is handed over with the other Untypeds.
    let scratch = (1u64 << ROOT_CNODE_RADIX) - 1;
    let (base, bits) = boot_memory;
    space.insert_root(
        at(scratch),
        Capability::Untyped { base, size_bits: bits, free_index: 0, device: false },
    );
    let mut builder = Builder {
        space,
        root,
        cnode,
        untyped: at(scratch),
        next_slot: slot::FIRST_VARIABLE,
        tables: heapless::Vec::new(),
    };

    builder.retype_at(ObjectType::Pml4, 0, slot::VSPACE)?;
    builder.retype_at(ObjectType::Tcb, 0, slot::TCB)?;
    // The ASID pool: a 4 KiB Untyped turned into a pool.
    let pool_memory = builder.retype(ObjectType::Untyped, 12)?;
    let extra = [pool_memory, at(slot::CNODE)];
    builder.invoke(at(slot::ASID_CONTROL), Label::AsidControlMakePool, &[slot::ASID_POOL, 64], &extra)?;
    builder.invoke(at(slot::ASID_POOL), Label::AsidPoolAssign, &[], &[at(slot::VSPACE)])?;

    // Paging structures first, so that the image frames' slots are
    // consecutive, in address order; then the frames, stack, IPC buffer
    // and boot info.
    for page in (plan.virtual_base..plan.virtual_end).step_by(4096) {
        builder.ensure_tables(page)?;
    }
    let first_image_slot = builder.next_slot;
    let rw = (Rights::READ | Rights::WRITE).bits();
    for page in (plan.virtual_base..plan.virtual_end).step_by(4096) {
        let frame = builder.retype(ObjectType::Frame4K, 0)?;
        builder.write_frame(frame, &plan.page_bytes(image, page))?;
        let (rights, attributes) = plan.page_permissions(page);
        builder.map_frame(frame, page, rights.bits(), attributes.bits())?;
    }
    let image_frames = SlotRange { start: first_image_slot, end: builder.next_slot };
    if image_frames.end >= scratch {
        return Err(RootTaskError::TooLarge);
    }
    for page in 0..STACK_PAGES {
        let frame = builder.retype(ObjectType::Frame4K, 0)?;
        builder.map_frame(frame, STACK_TOP - (page + 1) * 4096, rw, 0)?;
    }
    builder.retype_at(ObjectType::Frame4K, 0, slot::IPC_BUFFER)?;
    builder.map_frame(at(slot::IPC_BUFFER), IPC_BUFFER_ADDRESS, rw, 0)?;
    builder.retype_at(ObjectType::Frame4K, 0, slot::BOOT_INFO)?;
    builder.map_frame(at(slot::BOOT_INFO), BOOT_INFO_ADDRESS, Rights::READ.bits(), 0)?;

    // The thread: roots, IPC buffer, registers, top priority, runnable.
    let Capability::Tcb { object: tcb } = builder.space.cap(at(slot::TCB)) else {
        return Err(RootTaskError::Build(InvocationError::IllegalOperation));
    };
    let configure = builder.space.decode_tcb(
        builder.space.cap(at(slot::TCB)),
        Label::TcbConfigure,
        &[IPC_BUFFER_ADDRESS],
        &[at(slot::CNODE), at(slot::VSPACE), at(slot::IPC_BUFFER)],
    )?;
    builder.space.perform_tcb(configure);
    builder.space.memory.write(tcb.offset(crate::object::tcb::layout::PRIORITY), 255 | 255 << 8);
    let context =
        UserContext { rip: plan.entry, rsp: STACK_TOP, rdi: BOOT_INFO_ADDRESS, ..UserContext::default() };
    builder.space.set_context(tcb, &context.sanitised());

    // Untypeds: the rest of the boot region, then all other free memory.
    let mut info = BootInfo {
        magic: bootinfo::MAGIC,
        version: bootinfo::VERSION,
        ipc_buffer_address: IPC_BUFFER_ADDRESS,
        image_frames,
        cnode_radix: u64::from(ROOT_CNODE_RADIX),
        ..BootInfo::new_zeroed()
    };
    let first_untyped = builder.next_slot;
    let boot_untyped = builder.space.cap(at(scratch));
    builder.space.move_cap(at(scratch), at(builder.next_slot), boot_untyped);
    builder.record(&mut info, boot_untyped);
    for (start, length) in free {
        for (block, size_bits) in blocks(start, length) {
            if builder.next_slot >= scratch || info.untyped_count as usize >= bootinfo::MAX_UNTYPEDS {
                break;
            }
            let cap = Capability::Untyped { base: PhysAddr(block), size_bits, free_index: 0, device: false };
            builder.space.insert_root(at(builder.next_slot), cap);
            builder.record(&mut info, cap);
        }
    }
    info.untyped_slots = SlotRange { start: first_untyped, end: builder.next_slot };

    // The modules: copied into frames from what is left of the boot
    // Untyped (now in the first Untyped slot), mapped read-only.
    builder.untyped = at(first_untyped);
    let mut address = MODULES_ADDRESS;
    for (descriptor, module) in info.modules.iter_mut().zip(modules) {
        // Tables first, so that the module's frame slots are consecutive.
        for offset in (0..module.bytes.len()).step_by(4096) {
            builder.ensure_tables(address + offset as u64)?;
        }
        let first = builder.next_slot;
        // Each frame is zero past the end of the module.
        for (n, page) in module.bytes.chunks(4096).enumerate() {
            let frame = builder.retype(ObjectType::Frame4K, 0)?;
            builder.write_frame(frame, page)?;
            builder.map_frame(frame, address + 4096 * n as u64, Rights::READ.bits(), 0)?;
            if builder.next_slot >= scratch {
                return Err(RootTaskError::TooLarge);
            }
        }
        descriptor.name[..module.name.len()].copy_from_slice(module.name.as_bytes());
        descriptor.address = address;
        descriptor.size = module.bytes.len() as u64;
        descriptor.frames = SlotRange { start: first, end: builder.next_slot };
        address += (module.bytes.len() as u64).div_ceil(4096) * 4096 + 4096;
        info.module_count += 1;
    }
    info.first_free_slot = builder.next_slot;
    builder.write_frame(at(slot::BOOT_INFO), info.as_bytes())?;
    let resume = builder.space.decode_tcb(builder.space.cap(at(slot::TCB)), Label::TcbResume, &[], &[])?;
    builder.space.perform_tcb(resume);
    Ok(RootTask { tcb, entry: plan.entry, untypeds: info.untyped_count })
}

/// Splits `[start, start + length)` into naturally aligned power-of-two
/// blocks of at least 4 KiB and at most 2^47 bytes.
pub fn blocks(start: u64, length: u64) -> impl Iterator<Item = (u64, u8)> {
    let mut next = start.next_multiple_of(4096);
    let end = start.saturating_add(length) / 4096 * 4096;
    core::iter::from_fn(move || {
        if next >= end {
            return None;
        }
        let align_bits = if next == 0 { 47 } else { next.trailing_zeros().min(47) };
        let fit_bits = 63 - (end - next).leading_zeros();
        let bits = align_bits.min(fit_bits) as u8;
        let block = (next, bits);
        next += 1 << bits;
        Some(block)
    })
}

struct Builder<'s, M: PhysicalMemory> {
    space: &'s mut ObjectSpace<M>,
    root: Capability,
    cnode: PhysAddr,
    untyped: Slot,
    next_slot: u64,
    /// Paging structures made so far, as (object type, address >> coverage bits).
    tables: heapless::Vec<(u64, u64), 256>,
}

impl<M: PhysicalMemory> Builder<'_, M> {
    fn at(&self, n: u64) -> Slot {
        Slot::in_cnode(self.cnode, n)
    }

    fn retype_at(&mut self, kind: ObjectType, size: u64, index: u64) -> Result<Slot, InvocationError> {
        let retype = self.space.decode_retype(self.untyped, kind as u64, size, self.root, index, 1)?;
        self.space.perform_retype(&retype);
        Ok(self.at(index))
    }

    fn retype(&mut self, kind: ObjectType, size: u64) -> Result<Slot, InvocationError> {
        let slot = self.retype_at(kind, size, self.next_slot)?;
        self.next_slot += 1;
        Ok(slot)
    }

    /// Decodes and performs an address-space invocation on `target`.
    fn invoke(
        &mut self,
        target: Slot,
        label: Label,
        words: &[u64],
        extra: &[Slot],
    ) -> Result<(), InvocationError> {
        let invocation = self.space.decode_vspace(target, label, words, extra)?;
        self.space.perform_vspace(invocation);
        Ok(())
    }

    /// Creates and installs the PDPT, page directory and page table that
    /// `address` needs, unless this builder made them already.
    fn ensure_tables(&mut self, address: u64) -> Result<(), InvocationError> {
        let vspace = self.at(slot::VSPACE);
        for (kind, shift) in
            [(ObjectType::Pdpt, 39), (ObjectType::PageDirectory, 30), (ObjectType::PageTable, 21)]
        {
            let region = (kind as u64, address >> shift);
            if self.tables.contains(&region) {
                continue;
            }
            let table = self.retype(kind, 0)?;
            self.invoke(table, Label::PageTableMap, &[address], &[vspace])?;
            self.tables.push(region).map_err(|_| InvocationError::NotEnoughMemory { available: 0 })?;
        }
        Ok(())
    }

    /// Maps `frame` at `address`, creating the paging structures above it.
    fn map_frame(
        &mut self,
        frame: Slot,
        address: u64,
        rights: u64,
        attributes: u64,
    ) -> Result<(), InvocationError> {
        if address >= USER_TOP {
            return Err(InvocationError::InvalidArgument { index: 0 });
        }
        self.ensure_tables(address)?;
        self.invoke(frame, Label::FrameMap, &[address, rights, attributes], &[self.at(slot::VSPACE)])
    }

    /// Writes `bytes` (at most 4 KiB) into `frame`, the last word padded with zeros.
    fn write_frame(&mut self, frame: Slot, bytes: &[u8]) -> Result<(), InvocationError> {
        let Capability::Frame { object, .. } = self.space.cap(frame) else {
            return Err(InvocationError::IllegalOperation);
        };
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.space.memory.write(object.offset(8 * i as u64), u64::from_le_bytes(word));
        }
        Ok(())
    }

    fn record(&mut self, info: &mut BootInfo, cap: Capability) {
        let entry = info.untypeds.get_mut(info.untyped_count as usize);
        if let (Capability::Untyped { base, size_bits, device, .. }, Some(entry)) = (cap, entry) {
            *entry = UntypedDescriptor {
                physical_address: base.get(),
                size_bits,
                device: u8::from(device),
                reserved: [0; 6],
            };
            info.untyped_count += 1;
        }
        self.next_slot += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::memory::Arena;
    use crate::object::tcb::ThreadState;
    use strata_abi::elf::testing::elf;

    /// A root task image: text (R-X) with a recognisable pattern at 0x400000,
    /// data (RW-) at 0x401000 with 0x80 file bytes and bss.
    fn image() -> Vec<u8> {
        let mut file = elf(
            0x40_0010,
            &[(1, 5, 0x1000, 0x40_0000, 0x20, 0x20), (1, 6, 0x2000, 0x40_1000, 0x80, 0x3000)],
            0x3000,
        );
        file[0x1000..0x1004].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        file[0x2000..0x2004].copy_from_slice(&[1, 2, 3, 4]);
        file
    }

    fn translate(
        space: &ObjectSpace<Arena>,
        pml4: PhysAddr,
        address: u64,
    ) -> Option<(u64, crate::arch::x86_64::paging::PteFlags)> {
        use crate::arch::x86_64::paging::{Level, PageTableEntry, PteFlags};
        let mut table = pml4.get();
        let mut level = Level::Pml4;
        loop {
            let entry = PageTableEntry::from_raw(
                space.memory.read(PhysAddr(table + 8 * level.index_of(address) as u64)),
            );
            if !entry.is_present() {
                return None;
            }
            if level == Level::Pt || entry.flags().contains(PteFlags::HUGE) {
                return Some((entry.address() + (address & 0xfff), entry.flags()));
            }
            table = entry.address();
            level = level.next()?;
        }
    }

    #[test]
    fn the_root_task_gets_its_image_stack_buffers_and_untypeds() {
        let mut space = ObjectSpace::new(Arena::new(0, 16 << 20));
        let mut free = [(0x40_0000u64, 0x40_0000u64), (0x90_0000, 0x30_5000)].into_iter();
        let task =
            create(&mut space, &image(), &[], PhysAddr(0x10_0000), (PhysAddr(0x20_0000), 21), &mut free)
                .expect("created");
        assert_eq!(task.entry, 0x40_0010);
        let cnode = PhysAddr(0x10_0000);
        let cap = |n: u64| space.cap(Slot::in_cnode(cnode, n));
        let Capability::Pml4 { object: pml4, asid: Some(_) } = cap(slot::VSPACE) else {
            panic!("no address space")
        };
        assert!(matches!(cap(slot::TCB), Capability::Tcb { .. }));
        assert!(matches!(cap(slot::ASID_POOL), Capability::AsidPool { .. }));
        // Text: the file's bytes, read-execute. Data: its bytes, then zero, read-write, no execute.
        let (text, text_flags) = translate(&space, pml4, 0x40_0000).expect("text mapped");
        assert_eq!(space.memory.read(PhysAddr(text)) & 0xffff_ffff, 0xefbe_adde);
        assert!(!text_flags.contains(crate::arch::x86_64::paging::PteFlags::WRITABLE));
        assert!(!text_flags.contains(crate::arch::x86_64::paging::PteFlags::NO_EXECUTE));
        let (data, data_flags) = translate(&space, pml4, 0x40_1000).expect("data mapped");
        assert_eq!(space.memory.read(PhysAddr(data)) & 0xffff_ffff, 0x0403_0201);
        assert_eq!(space.memory.read(PhysAddr(data + 0x80)), 0);
        assert!(data_flags.contains(
            crate::arch::x86_64::paging::PteFlags::WRITABLE
                | crate::arch::x86_64::paging::PteFlags::NO_EXECUTE
        ));
        assert!(translate(&space, pml4, 0x40_3000).is_some(), "bss mapped");
        // The image frames' slots hold exactly the image's frames, in address order.
        let image_start =
            space.memory.read(PhysAddr(translate(&space, pml4, BOOT_INFO_ADDRESS).expect("mapped").0 + 32));
        let image_end =
            space.memory.read(PhysAddr(translate(&space, pml4, BOOT_INFO_ADDRESS).expect("mapped").0 + 40));
        assert_eq!(image_end - image_start, 4, "text page, data page and two bss pages");
        for (n, index) in (image_start..image_end).enumerate() {
            let Capability::Frame { mapping: Some(m), .. } = cap(index) else {
                panic!("slot {index} is not a mapped frame")
            };
            assert_eq!(m.address, 0x40_0000 + 0x1000 * n as u64);
        }
        assert!(translate(&space, pml4, STACK_TOP - 8).is_some(), "stack mapped");
        assert!(translate(&space, pml4, STACK_TOP).is_none(), "nothing above the stack");
        // Boot info: read-only, lists the Untypeds, which cover the free memory.
        let (info, info_flags) = translate(&space, pml4, BOOT_INFO_ADDRESS).expect("boot info mapped");
        assert!(!info_flags.contains(crate::arch::x86_64::paging::PteFlags::WRITABLE));
        assert_eq!(space.memory.read(PhysAddr(info)), bootinfo::MAGIC);
        let count = space.memory.read(PhysAddr(info + 64));
        assert_eq!(count, task.untypeds);
        let first_untyped = space.memory.read(PhysAddr(info + 48));
        let mut total = 0;
        for n in 0..count {
            let Capability::Untyped { size_bits, base, .. } = cap(first_untyped + n) else {
                panic!("untyped {n}")
            };
            assert_eq!(base.get() % (1 << size_bits), 0, "untyped {n} misaligned");
            total += 1u64 << size_bits;
        }
        // The boot region (2 MiB) plus 4 MiB plus 3 MiB + 20 KiB of free memory.
        assert_eq!(total, (2 << 20) + (4 << 20) + 0x30_5000);
        // The thread: runnable, at the entry point, with the boot-info address in RDI.
        assert_eq!(space.thread_state(task.tcb), ThreadState::Runnable);
        let context = space.context(task.tcb);
        assert_eq!((context.rip, context.rsp, context.rdi), (0x40_0010, STACK_TOP, BOOT_INFO_ADDRESS));
        assert_eq!(space.choose_thread(), Some(task.tcb));
    }

    #[test]
    fn a_bad_image_or_too_little_memory_is_refused() {
        let mut space = ObjectSpace::new(Arena::new(0, 8 << 20));
        let kernel_like =
            elf(0xffff_ffff_8000_0000, &[(1, 5, 0x1000, 0xffff_ffff_8000_0000, 0x10, 0x10)], 0x2000);
        let result = create(
            &mut space,
            &kernel_like,
            &[],
            PhysAddr(0x10_0000),
            (PhysAddr(0x20_0000), 21),
            &mut core::iter::empty(),
        );
        assert!(matches!(result, Err(RootTaskError::Elf(ElfError::OutsideRange { .. }))));
        let mut space = ObjectSpace::new(Arena::new(0, 8 << 20));
        let result = create(
            &mut space,
            &image(),
            &[],
            PhysAddr(0x10_0000),
            (PhysAddr(0x20_0000), 14),
            &mut core::iter::empty(),
        );
        assert!(matches!(result, Err(RootTaskError::Build(InvocationError::NotEnoughMemory { .. }))));
    }

    #[test]
    fn boot_modules_are_copied_mapped_read_only_and_described() {
        use strata_abi::bootinfo::ModuleDescriptor;
        use zerocopy::FromBytes;
        let mut space = ObjectSpace::new(Arena::new(0, 16 << 20));
        let big: Vec<u8> = (0..9000u32).map(|i| (i % 251) as u8).collect();
        let modules = [Module { name: "hello", bytes: &big }, Module { name: "tiny", bytes: b"abc" }];
        let bits = boot_memory_bits(&image(), &modules);
        assert_eq!(bits, 22, "2 MiB plus the image and modules rounds up to 4 MiB");
        let mut free = core::iter::empty();
        create(&mut space, &image(), &modules, PhysAddr(0x10_0000), (PhysAddr(0x40_0000), bits), &mut free)
            .expect("created");
        let cnode = PhysAddr(0x10_0000);
        let Capability::Pml4 { object: pml4, .. } = space.cap(Slot::in_cnode(cnode, slot::VSPACE)) else {
            panic!("no address space")
        };
        let (info, _) = translate(&space, pml4, BOOT_INFO_ADDRESS).expect("boot info mapped");
        let page: Vec<u8> =
            (0..512).flat_map(|i| space.memory.read(PhysAddr(info + 8 * i)).to_le_bytes()).collect();
        let info = BootInfo::read_from_bytes(&page[..core::mem::size_of::<BootInfo>()]).expect("boot info");
        let described: Vec<ModuleDescriptor> = info.modules().to_vec();
        assert_eq!(described.len(), 2);
        assert_eq!(
            (described[0].name(), described[0].size, described[0].address),
            (Some("hello"), 9000, MODULES_ADDRESS)
        );
        assert_eq!(described[0].frames.end - described[0].frames.start, 3);
        // The second module starts after the first one's pages and a guard page.
        assert_eq!((described[1].name(), described[1].address), (Some("tiny"), MODULES_ADDRESS + 4 * 4096));
        assert!(translate(&space, pml4, MODULES_ADDRESS + 3 * 4096).is_none(), "guard page");
        // Every byte is there, read-only and not executable; the page tail is zero.
        for (offset, &byte) in big.iter().enumerate().step_by(997) {
            let (physical, flags) = translate(&space, pml4, MODULES_ADDRESS + offset as u64).expect("mapped");
            let word = space.memory.read(PhysAddr(physical & !7));
            assert_eq!(word.to_le_bytes()[(physical & 7) as usize], byte, "byte {offset}");
            assert!(!flags.contains(crate::arch::x86_64::paging::PteFlags::WRITABLE));
            assert!(flags.contains(crate::arch::x86_64::paging::PteFlags::NO_EXECUTE));
        }
        // The word after the last byte (9000 is a multiple of 8).
        let (tail, _) = translate(&space, pml4, MODULES_ADDRESS + 9000).expect("last page");
        assert_eq!(space.memory.read(PhysAddr(tail)), 0);
        assert_eq!(info.first_free_slot, described[1].frames.end);
    }

    #[test]
    fn too_many_modules_or_a_long_name_is_refused() {
        let mut space = ObjectSpace::new(Arena::new(0, 16 << 20));
        let nine = [Module { name: "m", bytes: b"x" }; bootinfo::MAX_MODULES + 1];
        let result = create(
            &mut space,
            &image(),
            &nine,
            PhysAddr(0x10_0000),
            (PhysAddr(0x40_0000), 22),
            &mut core::iter::empty(),
        );
        assert!(matches!(result, Err(RootTaskError::TooManyModules)));
        let long = [Module { name: "a-module-name-of-thirty-two-byte", bytes: b"x" }];
        let result = create(
            &mut space,
            &image(),
            &long,
            PhysAddr(0x10_0000),
            (PhysAddr(0x40_0000), 22),
            &mut core::iter::empty(),
        );
        assert!(matches!(result, Err(RootTaskError::ModuleName)));
    }

    #[test]
    fn free_memory_splits_into_aligned_blocks() {
        let split = |start, length| blocks(start, length).collect::<Vec<_>>();
        assert_eq!(split(0x1000, 0x7000), [(0x1000, 12), (0x2000, 13), (0x4000, 14)]);
        assert_eq!(split(0x123, 0x3000), [(0x1000, 12), (0x2000, 12)]);
        assert_eq!(blocks(0, 0).count(), 0);
        for (base, bits) in blocks(0x10_3000, 0x1234_5000) {
            assert_eq!(base % (1 << bits), 0);
        }
    }
}
