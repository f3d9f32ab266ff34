//! Tests of VCPUs and GuestSpaces on both backends: the reset state, field
//! checks and translations, binding and its undoing on delete, guest
//! mappings in both entry formats, exit classification and the refusals
//! of `VmEnter`.

use strata_abi::error::InvocationError;
use strata_abi::invocation::Label;
use strata_abi::object::{ObjectType, Rights, VmAttributes};
use strata_abi::vcpu::{self, Exit, Field, Segment, SegmentPart, segment_field};

use super::delete::Budget;
use super::memory::Arena;
use super::model::{POOL, check_invariants, finish, invoke, retype, root_cap, slot, world};
use super::vcpu::{Backend, NeutralExit, RawExit, VmEnterRefusal, classify_svm, layout, vmcb};
use super::vmx::{VmxConfig, vmcs};
use super::*;

const VCPU: u64 = 60;
const SPACE: u64 = 61;
const GUEST_PDPT: u64 = 62;
const GUEST_PD: u64 = 63;
const GUEST_PT: u64 = 57;
const RAM: u64 = 23;

/// The model world with one thread (slot 40), a VCPU (60) and a GuestSpace
/// (61) with an ASID, on `backend`.
fn machine(backend: Backend) -> (ObjectSpace<Arena>, PhysAddr, PhysAddr) {
    let (mut space, tcbs) = world(1);
    space.virt.backend = backend;
    space.virt.vmx = VmxConfig {
        revision: 0x2b,
        pin: 0x9,
        primary: 0x8110_0008,
        primary_allowed: u32::MAX,
        secondary: 0x82,
        exit: 0x3c_0204,
        entry: 0xc004,
        cr0_fixed0: 0x20,
        cr4_fixed0: 0x2000,
        preemption_timer: 0,
    };
    retype(&mut space, ObjectType::Vcpu, 0, VCPU, 1);
    retype(&mut space, ObjectType::GuestSpace, 0, SPACE, 1);
    invoke(&mut space, POOL, Label::AsidPoolAssign, &[], &[SPACE]).expect("assign");
    let Capability::Vcpu { object } = space.cap(slot(VCPU)) else { panic!("a VCPU") };
    (space, object, tcbs[0])
}

fn vcpu_call(
    space: &mut ObjectSpace<Arena>,
    label: Label,
    words: &[u64],
    extra: &[u64],
) -> Result<([u64; 4], usize), InvocationError> {
    let extra: Vec<Slot> = extra.iter().map(|&i| slot(i)).collect();
    let invocation = space.decode_vcpu(space.cap(slot(VCPU)), label, words, &extra)?;
    Ok(space.perform_vcpu(invocation))
}

fn read(space: &mut ObjectSpace<Arena>, field: u64) -> u64 {
    vcpu_call(space, Label::VcpuReadState, &[field], &[]).expect("readable").0[0]
}

#[test]
fn a_new_vcpu_is_a_processor_after_reset_on_both_backends() {
    for backend in [Backend::Svm, Backend::Vmx] {
        let (mut space, _, _) = machine(backend);
        // #DB and #AC always exit, whatever the VMM asks (CVE-2015-8104, -5307).
        let forced = super::vcpu::FORCED_EXCEPTIONS;
        assert_eq!(read(&mut space, Field::ExceptionIntercepts as u64) & forced, forced, "{backend:?}");
        vcpu_call(&mut space, Label::VcpuWriteState, &[Field::ExceptionIntercepts as u64, 1 << 6], &[])
            .expect("ok");
        assert_eq!(read(&mut space, Field::ExceptionIntercepts as u64), forced | 1 << 6, "{backend:?}");
        let cs = |part| segment_field(Segment::Cs, part);
        assert_eq!(read(&mut space, cs(SegmentPart::Selector)), 0xf000, "{backend:?}");
        assert_eq!(read(&mut space, cs(SegmentPart::Base)), 0xffff_0000);
        assert_eq!(read(&mut space, cs(SegmentPart::Limit)), 0xffff);
        assert_eq!(read(&mut space, cs(SegmentPart::Attributes)), 0x9b);
        assert_eq!(read(&mut space, Field::Rip as u64), 0xfff0);
        assert_eq!(read(&mut space, Field::Rflags as u64), 2);
        assert_eq!(read(&mut space, Field::Cr0 as u64), 0x6000_0010);
        assert_eq!(read(&mut space, Field::Efer as u64), 0, "{backend:?}: EFER.SVME is the kernel's");
        assert_eq!(read(&mut space, Field::Pat as u64), 0x0007_0406_0007_0406);
    }
}

#[test]
fn svm_keeps_its_forced_intercepts_whatever_the_vmm_asks() {
    let (mut space, vcpu, _) = machine(Backend::Svm);
    let control =
        |space: &ObjectSpace<Arena>, offset| space.memory.read(vcpu.offset(layout::CONTROL + offset));
    for intercepts in [0, vcpu::intercept::ALL] {
        vcpu_call(&mut space, Label::VcpuWriteState, &[Field::Intercepts as u64, intercepts], &[])
            .expect("ok");
        let misc1 = control(&space, vmcb::INTERCEPT_EXCEPTIONS) >> 32;
        assert_eq!(misc1 & vmcb::FORCED_MISC1, vmcb::FORCED_MISC1, "INTR, NMI, CPUID, I/O, MSR, SHUTDOWN...");
        assert_eq!(misc1 & 1 << 24 != 0, intercepts != 0, "HLT follows the request");
        let misc2 = control(&space, vmcb::INTERCEPT_MISC2);
        assert_eq!(misc2 & vmcb::FORCED_MISC2, vmcb::FORCED_MISC2, "VMRUN and the other SVM instructions");
    }
    // EFER.SVME, which VMRUN requires, stays set and hidden.
    vcpu_call(&mut space, Label::VcpuWriteState, &[Field::Efer as u64, 0x500], &[]).expect("long mode");
    assert_eq!(control(&space, vmcb::EFER), 0x500 | vmcb::EFER_SVME);
    assert_eq!(read(&mut space, Field::Efer as u64), 0x500);
    // The CPL follows SS.DPL.
    let ss = segment_field(Segment::Ss, SegmentPart::Attributes);
    vcpu_call(&mut space, Label::VcpuWriteState, &[ss, 0xc0f3], &[]).expect("DPL 3");
    assert_eq!(control(&space, vmcb::CPL_WORD) >> 24 & 0xff, 3);
    // Segment attributes go through SVM's compressed layout and back.
    assert_eq!(read(&mut space, ss), 0xc0f3);
    // An interrupt window sets V_IRQ and the VINTR intercept; the exit clears both.
    vcpu_call(&mut space, Label::VcpuWriteState, &[Field::InterruptWindow as u64, 1], &[]).expect("window");
    assert_eq!(read(&mut space, Field::InterruptWindow as u64), 1);
    assert_ne!(control(&space, vmcb::INTERRUPT_CONTROL) & vmcb::V_IRQ, 0);
    space.memory.write(vcpu.offset(layout::CONTROL + vmcb::EXIT_CODE), vmcb::exit::VINTR);
    let entry = super::vcpu::VmEntry { vcpu, flush: false, buffer: PhysAddr(0), registers: vcpu, vmx: false };
    assert_eq!(space.vm_exit(&entry).map(|e| e.reason), Some(Exit::InterruptWindow));
    assert_eq!(read(&mut space, Field::InterruptWindow as u64), 0);
}

#[test]
fn vmx_fields_go_to_the_vmcs_with_fixed_bits_and_shadows() {
    let (mut space, vcpu, _) = machine(Backend::Vmx);
    let vmcs_of =
        |space: &ObjectSpace<Arena>, field| space.memory.vmcs_read(vcpu.offset(layout::CONTROL), field);
    assert_eq!(vmcs_of(&space, vmcs::LINK_POINTER), u64::MAX, "no shadow VMCS");
    assert_eq!(space.memory.read(vcpu.offset(layout::CONTROL)), 0x2b, "revision identifier");
    assert_eq!(vmcs_of(&space, vmcs::GUEST_CR4), 0x2000, "a new VCPU has the CR4 bits VMX fixes");
    assert_eq!(read(&mut space, Field::Cr4 as u64), 0, "and reads its reset CR4");
    // CR0 and CR4 keep what VMX needs (NE, VMXE); the guest reads its own value.
    vcpu_call(&mut space, Label::VcpuWriteState, &[Field::Cr0 as u64, 0x11, Field::Cr4 as u64, 0x20], &[])
        .expect("protected mode, PAE");
    assert_eq!(vmcs_of(&space, vmcs::GUEST_CR0), 0x31);
    assert_eq!(vmcs_of(&space, vmcs::GUEST_CR4), 0x2020);
    assert_eq!(read(&mut space, Field::Cr0 as u64), 0x11);
    assert_eq!(read(&mut space, Field::Cr4 as u64), 0x20);
    // Long mode: the IA-32e entry control follows EFER.LMA.
    vcpu_call(&mut space, Label::VcpuWriteState, &[Field::Efer as u64, 0x500], &[]).expect("long mode");
    assert_ne!(vmcs_of(&space, vmcs::ENTRY_CONTROLS) & 1 << 9, 0);
    vcpu_call(&mut space, Label::VcpuWriteState, &[Field::Efer as u64, 0], &[]).expect("legacy");
    assert_eq!(vmcs_of(&space, vmcs::ENTRY_CONTROLS) & 1 << 9, 0);
    // Optional intercepts and the interrupt window are primary controls.
    let hlt_and_window = [Field::Intercepts as u64, vcpu::intercept::HLT, Field::InterruptWindow as u64, 1];
    vcpu_call(&mut space, Label::VcpuWriteState, &hlt_and_window, &[]).expect("ok");
    let primary = vmcs_of(&space, vmcs::PRIMARY_CONTROLS);
    assert_eq!(primary & (1 << 7 | 1 << 2), 1 << 7 | 1 << 2);
    assert_eq!(primary & 1 << 24, 1 << 24, "I/O always exits");
    // General registers other than RSP live in the VCPU, RSP in the VMCS.
    vcpu_call(&mut space, Label::VcpuWriteState, &[Field::Rax as u64, 7, Field::Rsp as u64, 0x8000], &[])
        .expect("ok");
    assert_eq!(space.memory.read(vcpu.offset(layout::REGISTERS)), 7);
    assert_eq!(vmcs_of(&space, vmcs::GUEST_RSP), 0x8000);
    // Deleting the VCPU VMCLEARs its VMCS.
    finish(&mut space, 8, |s, b: &mut Budget| s.delete(slot(VCPU), b));
    assert_eq!(space.memory.vmcs_released, [vcpu.get()]);
}

#[test]
fn bad_state_is_refused_and_nothing_of_the_request_is_written() {
    for backend in [Backend::Svm, Backend::Vmx] {
        let (mut space, _, _) = machine(backend);
        let rip = Field::Rip as u64;
        let bad = |index: u8| Err(InvocationError::InvalidArgument { index });
        let mut write = |words: &[u64]| vcpu_call(&mut space, Label::VcpuWriteState, words, &[]).map(drop);
        assert_eq!(write(&[rip, 0x8000_0000_0000]), bad(1), "non-canonical RIP");
        assert_eq!(write(&[Field::Cr0 as u64, 1 << 32]), bad(1), "CR0 bits 63:32");
        assert_eq!(write(&[Field::Efer as u64, 1 << 2]), bad(1), "EFER reserved bit");
        assert_eq!(write(&[Field::Rflags as u64, 1 << 22]), bad(1), "RFLAGS reserved bit");
        assert_eq!(write(&[Field::PendingEvent as u64, 1 << 31 | 5 << 8]), bad(1), "event type 5");
        assert_eq!(write(&[segment_field(Segment::Cs, SegmentPart::Selector), 0x1_0000]), bad(1));
        assert_eq!(write(&[segment_field(Segment::Gdtr, SegmentPart::Selector), 0]), bad(0), "no such part");
        assert_eq!(write(&[segment_field(Segment::Ds, SegmentPart::Base), 1 << 32]), bad(1));
        assert_eq!(write(&[segment_field(Segment::Ss, SegmentPart::Attributes), 1 << 20]), bad(1));
        assert_eq!(write(&[Field::ActivityState as u64, 1]), bad(1));
        assert_eq!(write(&[Field::Sfmask as u64, 1 << 32]), bad(1), "SFMASK reserved half");
        assert_eq!(write(&[Field::SysenterCs as u64, 1 << 32]), bad(1));
        assert_eq!(write(&[43, 0]), bad(0), "no field 43");
        assert_eq!(write(&[Field::Xcr0 as u64, 0]), bad(1), "XCR0 without x87");
        assert_eq!(write(&[vcpu::FIELD_LIMIT, 0]), bad(0));
        assert_eq!(write(&[rip]), Err(InvocationError::TruncatedMessage { needed: 2 }));
        // A valid pair before an invalid one is not written either.
        assert_eq!(write(&[rip, 0x1234, Field::Cr0 as u64, 1 << 40]), bad(3));
        assert_eq!(read(&mut space, rip), 0xfff0, "{backend:?}");
        let read_bad = vcpu_call(&mut space, Label::VcpuReadState, &[0x41, 99], &[]);
        assert_eq!(read_bad.map(drop), Err(InvocationError::InvalidArgument { index: 1 }));
        assert_eq!(
            vcpu_call(&mut space, Label::VcpuReadState, &[], &[]).map(drop),
            Err(InvocationError::TruncatedMessage { needed: 1 })
        );
    }
}

#[test]
fn binding_links_vcpu_and_thread_and_deleting_either_undoes_it() {
    let (mut space, vcpu, tcb) = machine(Backend::Svm);
    assert_eq!(
        vcpu_call(&mut space, Label::VcpuSetTcb, &[], &[SPACE]).map(drop),
        Err(InvocationError::InvalidCapability { index: 1 })
    );
    vcpu_call(&mut space, Label::VcpuSetTcb, &[], &[40]).expect("bind");
    assert_eq!(space.bound_vcpu(tcb), Some(vcpu));
    // A second VCPU bound to the same thread takes the binding.
    retype(&mut space, ObjectType::Vcpu, 0, 59, 1);
    let Capability::Vcpu { object: second } = space.cap(slot(59)) else { panic!() };
    let bind = space.decode_vcpu(space.cap(slot(59)), Label::VcpuSetTcb, &[], &[slot(40)]).expect("ok");
    space.perform_vcpu(bind);
    assert_eq!(space.bound_vcpu(tcb), Some(second));
    assert_eq!(space.memory.read(vcpu.offset(layout::TCB)), 0, "the first is unbound");
    check_invariants(&space);
    finish(&mut space, 8, |s, b: &mut Budget| s.delete(slot(59), b));
    assert_eq!(space.bound_vcpu(tcb), None);
    vcpu_call(&mut space, Label::VcpuSetTcb, &[], &[40]).expect("bind again");
    finish(&mut space, 8, |s, b: &mut Budget| s.delete(slot(40), b));
    assert_eq!(space.memory.read(vcpu.offset(layout::TCB)), 0, "the thread's deletion unbinds");
    check_invariants(&space);
}

/// Maps a 4 KiB frame at guest-physical 0 through a PDPT, directory and table.
fn map_ram(
    space: &mut ObjectSpace<Arena>,
    rights: Rights,
    attributes: VmAttributes,
) -> Result<(), InvocationError> {
    retype(space, ObjectType::Pdpt, 0, GUEST_PDPT, 1);
    retype(space, ObjectType::PageDirectory, 0, GUEST_PD, 1);
    retype(space, ObjectType::PageTable, 0, GUEST_PT, 1);
    for table in [GUEST_PDPT, GUEST_PD, GUEST_PT] {
        invoke(space, table, Label::PageTableMap, &[0], &[SPACE])?;
    }
    retype(space, ObjectType::Frame4K, 0, RAM, 1);
    invoke(space, RAM, Label::FrameMap, &[0, rights.bits(), attributes.bits()], &[SPACE])
}

#[test]
fn guest_ram_maps_as_nested_paging_or_ept_entries_from_one_description() {
    // Nested paging: present, writable, user (every guest access is a user
    // access), no NX; EPT: read, write, execute, write-back.
    for (backend, expected) in [(Backend::Svm, 0x7u64), (Backend::Vmx, 6 << 3 | 0x7)] {
        let (mut space, _, _) = machine(backend);
        let rw = Rights::READ | Rights::WRITE;
        // Guest RAM may be writable and executable: the guest's own page tables decide.
        map_ram(&mut space, rw, VmAttributes::EXECUTABLE).expect("RWX guest RAM");
        let Capability::GuestSpace { object: root, .. } = space.cap(slot(SPACE)) else { panic!() };
        let pdpt = space.memory.read(root) & 0x000f_ffff_ffff_f000;
        let pd = space.memory.read(PhysAddr(pdpt)) & 0x000f_ffff_ffff_f000;
        let pt = space.memory.read(PhysAddr(pd)) & 0x000f_ffff_ffff_f000;
        let entry = space.memory.read(PhysAddr(pt));
        let frame = space.cap(slot(RAM)).region().expect("frame").0.get();
        assert_eq!(entry, frame | expected, "{backend:?}");
        assert_eq!(space.memory.read(root) & 0xfff, 0x7, "intermediate entries allow everything");
        // Unmapping leaves no tag with an owner, so that every next entry flushes.
        space.virt.tag_owner[1] = PhysAddr(0x1000);
        invoke(&mut space, RAM, Label::FrameUnmap, &[], &[]).expect("unmap");
        assert_eq!(space.memory.read(PhysAddr(pt)), 0);
        assert_eq!(space.virt.tag_owner[1], PhysAddr(0), "{backend:?}");
        check_invariants(&space);
    }
    // A thread's address space still refuses writable and executable.
    let (mut space, _, _) = machine(Backend::Svm);
    retype(&mut space, ObjectType::Frame4K, 0, RAM, 1);
    let rwx = [0x10000u64 + 0x8000, (Rights::READ | Rights::WRITE).bits(), VmAttributes::EXECUTABLE.bits()];
    assert_eq!(
        invoke(&mut space, RAM, Label::FrameMap, &rwx, &[18]),
        Err(InvocationError::InvalidArgument { index: 2 })
    );
}

#[test]
fn a_guestspace_is_not_an_address_space_for_threads() {
    let (mut space, _, _) = machine(Backend::Svm);
    retype(&mut space, ObjectType::Tcb, 0, 58, 1);
    let configure =
        space.decode_tcb(space.cap(slot(58)), Label::TcbConfigure, &[0, 0], &[slot(0), slot(SPACE)]);
    assert_eq!(configure.map(drop), Err(InvocationError::InvalidCapability { index: 2 }));
    // Nor is a PML4 a GuestSpace for a VCPU.
    assert_eq!(
        vcpu_call(&mut space, Label::VcpuSetSpace, &[], &[18]).map(drop),
        Err(InvocationError::InvalidCapability { index: 1 })
    );
}

#[test]
fn without_virtualization_there_are_no_vcpus() {
    let (mut space, _) = world(1);
    space.virt.backend = Backend::None;
    let refused = space.decode_retype(slot(1), ObjectType::Vcpu as u64, 0, root_cap(), 60, 1);
    assert_eq!(refused.map(drop), Err(InvocationError::IllegalOperation));
}

#[test]
fn vm_enter_needs_a_vcpu_a_buffer_and_a_live_guestspace() {
    let (mut space, vcpu, tcb) = machine(Backend::Svm);
    assert_eq!(space.vm_prepare(tcb, 0), Err(VmEnterRefusal::Error(InvocationError::IllegalOperation)));
    vcpu_call(&mut space, Label::VcpuSetTcb, &[], &[40]).expect("bind");
    let entry_failure = |space: &mut ObjectSpace<Arena>| match space.vm_prepare(tcb, 0) {
        Err(VmEnterRefusal::Exit(exit)) => exit.reason == Exit::EntryFailure,
        _ => false,
    };
    assert!(entry_failure(&mut space), "no GuestSpace yet");
    // Refused with registers to load, the VCPU takes them all (RIP and
    // RSP went to the control block; the general registers follow).
    let (buffer, _) = space.ipc_buffer(tcb).expect("buffer");
    let block = buffer.offset(core::mem::offset_of!(strata_abi::bootinfo::IpcBuffer, vcpu) as u64);
    space.memory.write(block.offset(8 * Field::Rbx as u64), 0x5eed);
    space.memory.write(block.offset(8 * Field::Rip as u64), 0x7000);
    assert!(matches!(space.vm_prepare(tcb, vcpu::enter::LOAD_REGISTERS), Err(VmEnterRefusal::Exit(_))));
    assert_eq!((read(&mut space, Field::Rip as u64), read(&mut space, Field::Rbx as u64)), (0x7000, 0x5eed));
    let unbound = {
        retype(&mut space, ObjectType::Vcpu, 0, 59, 1);
        space.decode_vcpu(space.cap(slot(59)), Label::VcpuSetSpace, &[], &[slot(SPACE)])
    };
    assert_eq!(unbound.map(drop), Err(InvocationError::IllegalOperation), "a VCPU bound to no thread");
    vcpu_call(&mut space, Label::VcpuSetSpace, &[], &[SPACE]).expect("space");
    let prepare =
        |space: &mut ObjectSpace<Arena>, flags| space.vm_prepare(tcb, flags).map(|e| (e.vcpu, e.flush));
    assert_eq!(prepare(&mut space, 0), Ok((vcpu, true)), "first entry flushes");
    assert_eq!(prepare(&mut space, 0), Ok((vcpu, false)), "then it does not");
    // A signal on the bound notification refuses the entry with its word,
    // before the flush a removed guest mapping asks for is spent.
    retype(&mut space, ObjectType::Notification, 0, 56, 1);
    let Capability::Notification { object: notification, .. } = space.cap(slot(56)) else {
        panic!("a notification")
    };
    space.bind_notification(tcb, notification);
    space.signal(notification, 0x24);
    space.virt.tag_owner = [PhysAddr(0); super::vcpu::TAG_SLOTS];
    let signalled = space.vm_prepare(tcb, 0);
    assert!(
        matches!(signalled, Err(VmEnterRefusal::Signal(entry, exit))
            if entry.vcpu == vcpu && (exit.reason, exit.qualification) == (Exit::Notification, 0x24)),
        "{signalled:?}"
    );
    assert_eq!(prepare(&mut space, 0), Ok((vcpu, true)), "the word was taken; the flush is still owed");
    // Registers from the IPC buffer: a non-canonical RIP is refused.
    let (buffer, _) = space.ipc_buffer(tcb).expect("buffer");
    let message = core::mem::offset_of!(strata_abi::bootinfo::IpcBuffer, vcpu) as u64;
    space.memory.write(buffer.offset(message + 8 * 16), 0xdead_0000_0000_0000);
    assert_eq!(
        space.vm_prepare(tcb, vcpu::enter::LOAD_REGISTERS),
        Err(VmEnterRefusal::Error(InvocationError::InvalidArgument { index: 0 }))
    );
    space.memory.write(buffer.offset(message + 8 * 16), 0x7c00);
    space.memory.write(buffer.offset(message + 8 * 3), 0x1234);
    let entry = space.vm_prepare(tcb, vcpu::enter::LOAD_REGISTERS).expect("prepared");
    assert_eq!(read(&mut space, Field::Rip as u64), 0x7c00, "RIP goes to the VMCB");
    // The entry code loads the general registers from the block itself;
    // without LOAD_REGISTERS, from the VCPU, where every exit stores them.
    assert_eq!(entry.registers, buffer.offset(message));
    let own = space.vm_prepare(tcb, 0).map(|entry| entry.registers);
    assert_eq!(own, Ok(vcpu.offset(layout::REGISTERS)));
    assert_ne!(read(&mut space, Field::Rbx as u64), 0x1234, "not copied");
    // Refused for a signal, the entry copies them, for the reply to give back.
    space.signal(notification, 0x1);
    let signalled = space.vm_prepare(tcb, vcpu::enter::LOAD_REGISTERS);
    assert!(matches!(signalled, Err(VmEnterRefusal::Signal(..))), "{signalled:?}");
    assert_eq!(read(&mut space, Field::Rbx as u64), 0x1234);
    // The thread holds the GuestSpace: deleting the capability it was set
    // from changes nothing; revoking the GuestSpace takes the thread's copy.
    let copy = ObjectSpace::<Arena>::tcb_slot(tcb, super::tcb::SPACE_SLOT);
    assert!(matches!(space.cap(copy), Capability::GuestSpace { asid: Some(_), .. }));
    finish(&mut space, 8, |s, b: &mut Budget| s.revoke(slot(SPACE), b));
    assert!(space.cap(copy).is_null());
    assert!(entry_failure(&mut space));
    check_invariants(&space);
}

#[test]
fn an_exit_reply_carries_the_reason_and_the_registers() {
    let (mut space, vcpu, tcb) = machine(Backend::Svm);
    vcpu_call(&mut space, Label::VcpuSetTcb, &[], &[40]).expect("bind");
    vcpu_call(&mut space, Label::VcpuWriteState, &[Field::Rcx as u64, 0x277, Field::Rax as u64, 9], &[])
        .expect("ok");
    let exit = NeutralExit { reason: Exit::MsrRead, qualification: 0x277, qualification2: 0, length: 2 };
    let buffer = space.ipc_buffer(tcb).expect("buffer").0;
    let entry = super::vcpu::VmEntry {
        vcpu,
        flush: false,
        buffer,
        registers: vcpu.offset(layout::REGISTERS),
        vmx: false,
    };
    space.vm_reply(tcb, &entry, exit);
    let context = space.context(tcb);
    assert_eq!(context.rsi >> 12, 0, "success label");
    // The SVM fastpath writes the same info word from the shared constant.
    let info = strata_abi::message::MessageInfo::new(0, 0, 4).encode().expect("encodable");
    assert_eq!((context.rsi, super::vcpu::EXIT_REPLY_INFO), (info, info));
    assert_eq!([context.rdx, context.r8, context.r10], [Exit::MsrRead as u64, 0x277, 2]);
    let (buffer, _) = space.ipc_buffer(tcb).expect("buffer");
    let message = core::mem::offset_of!(strata_abi::bootinfo::IpcBuffer, vcpu) as u64;
    assert_eq!(space.memory.read(buffer.offset(message)), 9, "RAX");
    assert_eq!(space.memory.read(buffer.offset(message + 8)), 0x277, "RCX");
    assert_eq!(space.memory.read(buffer.offset(message + 8 * 16)), 0xfff0, "RIP");
}

#[test]
fn svm_exits_translate_to_the_neutral_reasons() {
    let raw = |code, info1, info2| RawExit { code, info1, info2, rip: 0x1000, next_rip: 0 };
    // OUTSB with REP, 16-bit port 0x3f8, 32-bit addresses; the next RIP is in EXITINFO2.
    let io = classify_svm(raw(vmcb::exit::IOIO, 0x03f8_0000 | 1 << 4 | 1 << 2 | 1 << 3 | 1 << 8, 0x1002));
    let io = io.expect("for the VMM");
    assert_eq!(io.reason, Exit::Io);
    assert_eq!(io.qualification, 0x3f8 | 1 << 16 | vcpu::io::STRING | vcpu::io::REP);
    assert_eq!((io.qualification2, io.length), (4, 2));
    let cpuid = classify_svm(raw(vmcb::exit::CPUID, 0, 0)).expect("for the VMM");
    assert_eq!((cpuid.reason, cpuid.length), (Exit::Cpuid, 2), "without NRIP save: the fixed length");
    let npf = classify_svm(raw(vmcb::exit::NPF, 0b10 | 1, 0xfeb0_0000)).expect("for the VMM");
    assert_eq!(
        (npf.reason, npf.qualification, npf.qualification2),
        (Exit::NestedPageFault, 0b1010, 0xfeb0_0000)
    );
    let pf = classify_svm(raw(vmcb::exit::EXCEPTION + 14, 2, 0xdead_b000)).expect("for the VMM");
    assert_eq!((pf.qualification, pf.qualification2, pf.length), (14 | 1 << 8, 2, 0xdead_b000));
    assert_eq!(classify_svm(raw(vmcb::exit::INTR, 0, 0)), None, "the host's interrupt");
    let invalid = classify_svm(raw(vmcb::exit::INVALID, 0, 0)).expect("for the VMM");
    assert_eq!(invalid.reason, Exit::InvalidGuestState);
    let invalid = classify_svm(raw(0xffff_ffff, 0, 0)).expect("as QEMU writes it");
    assert_eq!(invalid.reason, Exit::InvalidGuestState);
    let vmrun = classify_svm(raw(vmcb::exit::VMRUN, 0, 0)).expect("for the VMM");
    assert_eq!((vmrun.reason, vmrun.qualification), (Exit::NestedVirtualization, vcpu::nested::VMRUN));
    assert_eq!(
        classify_svm(raw(0x3ff, 0, 0)).map(|e| (e.reason, e.qualification)),
        Some((Exit::Unsupported, 0x3ff))
    );
}

#[test]
fn xcr0_follows_xsetbv_rules() {
    for backend in [Backend::Svm, Backend::Vmx] {
        let (mut space, _, _) = machine(backend);
        space.virt.xcr0 = 0b111;
        let xcr0 = Field::Xcr0 as u64;
        assert_eq!(read(&mut space, xcr0), 1, "x87 only after reset");
        let write = |space: &mut ObjectSpace<Arena>, value| {
            vcpu_call(space, Label::VcpuWriteState, &[xcr0, value], &[]).map(|_| ())
        };
        let refused = Err(InvocationError::InvalidArgument { index: 1 });
        assert_eq!(write(&mut space, 0), refused, "x87 is always on");
        assert_eq!(write(&mut space, 0b101), refused, "AVX without SSE");
        assert_eq!(write(&mut space, 0b1111), refused, "a component the host did not enable");
        write(&mut space, 0b111).expect("x87, SSE and AVX");
        assert_eq!(read(&mut space, xcr0), 0b111);
        write(&mut space, 0b011).expect("AVX off");
        assert_eq!(read(&mut space, xcr0), 0b011);
        // On a host without AVX, a guest cannot have it.
        space.virt.xcr0 = 0b011;
        assert_eq!(write(&mut space, 0b111), refused);
    }
}

/// An exit consumes the TLB flush the entry asked for (the VMCB asks for
/// none until `vm_prepare` finds one needed), and an entry the CPU refused
/// leaves no VCPU as the last to run, so that the next entry flushes.
#[test]
fn an_exit_clears_the_flush_and_a_refused_entry_forgets_the_last_vcpu() {
    let (mut space, vcpu, tcb) = machine(Backend::Svm);
    vcpu_call(&mut space, Label::VcpuSetTcb, &[], &[40]).expect("bind");
    vcpu_call(&mut space, Label::VcpuSetSpace, &[], &[SPACE]).expect("space");
    let entry = space.vm_prepare(tcb, 0).expect("prepared");
    assert!(entry.flush, "a VCPU's first entry flushes");
    let tlb = layout::CONTROL + vmcb::ASID_TLB;
    assert_eq!(space.memory.read(vcpu.offset(tlb)), 1 | 1 << 32);
    space.memory.write(vcpu.offset(layout::CONTROL + vmcb::EXIT_CODE), vmcb::exit::CPUID);
    assert_eq!(space.vm_exit(&entry).map(|e| e.reason), Some(Exit::Cpuid));
    assert_eq!(space.memory.read(vcpu.offset(tlb)), 1, "the flush was consumed");
    assert_eq!(space.virt.last_run, vcpu);
    assert!(!space.vm_prepare(tcb, 0).expect("again").flush, "nothing changed");
    space.memory.write(vcpu.offset(layout::CONTROL + vmcb::EXIT_CODE), vmcb::exit::INVALID);
    assert_eq!(space.vm_exit(&entry).map(|e| e.reason), Some(Exit::InvalidGuestState));
    assert!(!space.owns_tag(vcpu), "the fastpath stays shut");
    assert!(space.vm_prepare(tcb, 0).expect("after the refusal").flush);
}

/// VCPUs take the hardware tags (SVM ASIDs, VMX VPIDs) in turn. Entries
/// that alternate between VCPUs with tags of their own keep their guests'
/// translations; a tag that changes hands is flushed.
#[test]
fn vcpus_take_tags_in_turn_and_a_tag_that_changes_hands_is_flushed() {
    let (mut space, tcbs) = world(2);
    space.virt.backend = Backend::Svm;
    space.virt.tags = 2;
    retype(&mut space, ObjectType::Vcpu, 0, 58, 3);
    retype(&mut space, ObjectType::GuestSpace, 0, SPACE, 1);
    invoke(&mut space, POOL, Label::AsidPoolAssign, &[], &[SPACE]).expect("assign");
    let vcpu = |space: &ObjectSpace<Arena>, n| match space.cap(slot(n)) {
        Capability::Vcpu { object } => object,
        _ => panic!("a VCPU"),
    };
    let (a, b, c) = (vcpu(&space, 58), vcpu(&space, 59), vcpu(&space, 60));
    let tags = [a, b, c].map(|v| space.memory.read(v.offset(layout::TAG)));
    assert_eq!(tags, [1, 2, 1], "two tags, taken in turn");
    let asid = |space: &ObjectSpace<Arena>, v: PhysAddr| {
        space.memory.read(v.offset(layout::CONTROL + vmcb::ASID_TLB)) & 0xffff_ffff
    };
    assert_eq!((asid(&space, a), asid(&space, b)), (1, 2), "the tag is the VMCB's ASID");
    let bind = |space: &mut ObjectSpace<Arena>, n: u64, thread: u64| {
        for (label, extra) in [(Label::VcpuSetTcb, 40 + thread), (Label::VcpuSetSpace, SPACE)] {
            let invocation = space.decode_vcpu(space.cap(slot(n)), label, &[], &[slot(extra)]).expect("bind");
            space.perform_vcpu(invocation);
        }
    };
    bind(&mut space, 58, 0);
    bind(&mut space, 59, 1);
    let flush = |space: &mut ObjectSpace<Arena>, thread: usize| {
        let entry = space.vm_prepare(tcbs[thread], 0).expect("prepared");
        space.memory.write(entry.vcpu.offset(layout::CONTROL + vmcb::EXIT_CODE), vmcb::exit::CPUID);
        space.vm_exit(&entry);
        (entry.vcpu, entry.flush)
    };
    assert_eq!([flush(&mut space, 0), flush(&mut space, 1)], [(a, true), (b, true)], "first entries");
    assert_eq!([flush(&mut space, 0), flush(&mut space, 1)], [(a, false), (b, false)], "own tags kept");
    // C shares A's tag: each flushes when it takes the tag from the other.
    bind(&mut space, 60, 0);
    assert_eq!([flush(&mut space, 0), flush(&mut space, 1)], [(c, true), (b, false)]);
    bind(&mut space, 58, 0);
    assert_eq!(flush(&mut space, 0), (a, true), "C ran under tag 1 since");
    assert_eq!(flush(&mut space, 0), (a, false));
    // A removed guest mapping flushes every VCPU once.
    space.virt.tag_owner = [PhysAddr(0); super::vcpu::TAG_SLOTS];
    assert_eq!([flush(&mut space, 0), flush(&mut space, 1)], [(a, true), (b, true)]);
    // So do the VMM's writes of paging state, as the guest's MOV to CR3
    // would (not other fields), and an intercepted INVLPG, which did not run.
    let write = |space: &mut ObjectSpace<Arena>, field: Field, value| {
        let invocation = space
            .decode_vcpu(space.cap(slot(58)), Label::VcpuWriteState, &[field as u64, value], &[])
            .expect("a write");
        space.perform_vcpu(invocation);
    };
    write(&mut space, Field::Rax, 1);
    assert_eq!(flush(&mut space, 0), (a, false), "RAX is not paging state");
    write(&mut space, Field::Cr3, 0x5000);
    assert_eq!([flush(&mut space, 0), flush(&mut space, 0)], [(a, true), (a, false)]);
    let entry = space.vm_prepare(tcbs[0], 0).expect("prepared");
    space.memory.write(a.offset(layout::CONTROL + vmcb::EXIT_CODE), vmcb::exit::INVLPG);
    assert_eq!(space.vm_exit(&entry).map(|e| e.reason), Some(Exit::Invlpg));
    assert!(!space.owns_tag(a), "the fastpath stays shut");
    assert_eq!(flush(&mut space, 0), (a, true));
    // VMX with VPIDs: the tag is the VMCS's VPID.
    let (mut space, vcpu, _) = machine(Backend::Vmx);
    assert_eq!(space.memory.vmcs_read(vcpu.offset(layout::CONTROL), vmcs::VPID), 0, "VPIDs off");
    space.virt.vmx.secondary |= super::vmx::control::VPID;
    space.virt.tags = 63;
    retype(&mut space, ObjectType::Vcpu, 0, 59, 1);
    let Capability::Vcpu { object } = space.cap(slot(59)) else { panic!("a VCPU") };
    assert_eq!(space.memory.vmcs_read(object.offset(layout::CONTROL), vmcs::VPID), 2, "the second VCPU");
}
