//! VCPU and GuestSpace cases: every decode error of the VCPU invocations
//! and of `VmEnter`, and a real-mode guest run to each kind of exit the
//! vendor-neutral ABI promises on both vendors (CPUID, HLT, a nested page
//! fault, an invalid guest state). The same cases run on QEMU (AMD SVM)
//! and Bochs (Intel VMX).

use strata_abi::vcpu::{Exit, Field, REGISTER_BLOCK_WORDS, Segment, SegmentPart, access, segment_field};
use strata_rt::cap::{Cap, GuestSpace, Vcpu, own};
use strata_rt::vm::{self, VmExit};

use super::*;

pub(super) fn run(suite: &mut Suite) {
    suite.case("user.vcpu_errors", vcpu_errors);
    suite.case("user.vm_exits", vm_exits);
    suite.case("user.vm_exit_restores_gdt", vm_exit_restores_gdt);
    suite.case("user.vm_host_interrupts", vm_host_interrupts);
    suite.case("user.vm_enter_ends_on_signal", vm_enter_ends_on_signal);
    suite.case("user.vm_guest_xcr0", vm_guest_xcr0);
    suite.case("user.vm_pkru_is_the_guests", vm_pkru_is_the_guests);
    suite.case("user.vm_fastpath_closes", vm_fastpath_closes);
    suite.case("user.vm_tags_keep_translations", vm_tags_keep_translations);
}

/// Two guests with the same guest-physical layout (different RAM) taking
/// turns on one thread: each runs its own code every time, and only the
/// first entry of each flushes guest translations, since each VCPU has a
/// hardware tag of its own (an SVM ASID, a VMX VPID).
fn vm_tags_keep_translations() -> Outcome {
    let (a, b, registers) = two_guests()?;
    let before = strata_rt::debug_counters()[5];
    for round in 0..3 {
        for (guest, name, expected) in [(&a, "A", Exit::Cpuid), (&b, "B", Exit::Io)] {
            bind_to_this_thread(guest).map_err(|e| detail!("bind {name}: {e}"))?;
            let (exit, _) = enter(&registers)?;
            if exit.reason != expected {
                return Err(detail!("round {round}: guest {name} exited with {:?}", exit.reason));
            }
        }
    }
    let flushes = strata_rt::debug_counters()[5] - before;
    if flushes != 2 {
        return Err(detail!("{flushes} guest TLB flushes for six entries of two VCPUs (want 2)"));
    }
    Ok(detail!("six entries alternating between two guests, two flushes"))
}

/// Two real-mode guests with the same layout and different code at 1000h,
/// A `cpuid; hlt` and B `out 0x80, al; hlt`, and the registers to enter
/// either at its first instruction.
fn two_guests() -> Result<(vm::Guest, vm::Guest, [u64; REGISTER_BLOCK_WORDS]), Detail> {
    let a = real_mode_guest_kept(0x1000, &[0x0f, 0xa2, 0xf4], 0)?;
    let b = real_mode_guest_kept(0x1000, &[0xe6, 0x80, 0xf4], 0)?;
    let mut registers = [0u64; REGISTER_BLOCK_WORDS];
    registers[Field::Rip as usize] = 0x1000;
    registers[Field::Rflags as usize] = 2;
    Ok((a, b, registers))
}

/// Binds `guest`'s VCPU to this thread, to run in its GuestSpace.
fn bind_to_this_thread(guest: &vm::Guest) -> Result<(), InvocationError> {
    guest.vcpu().set_tcb(own::TCB).and_then(|()| guest.vcpu().set_space(guest.space()))
}

/// Back-to-back `VmEnter`s take the SVM fastpath, and any other system
/// call closes it: after a second guest is made (its VCPU now bound to
/// this thread), the next `VmEnter` runs that guest, not the one the
/// fastpath last ran. On VMX every entry takes the general path, with the
/// same exits.
fn vm_fastpath_closes() -> Outcome {
    // SVM (AMD APM vol. 3, CPUID 8000_0001h ECX bit 2): the fastpath's backend.
    let svm = core::arch::x86_64::__cpuid(0x8000_0001).ecx & 1 << 2 != 0;
    let (a, b, registers) = two_guests()?;
    bind_to_this_thread(&a).map_err(|e| detail!("bind A: {e}"))?;
    // The counters are a system call too: read only around the whole run.
    let before = strata_rt::debug_counters()[4];
    let (first, _) = enter(&registers)?;
    let (second, _) = enter(&registers)?;
    // Two system calls, which must close the fastpath: B's VCPU runs next.
    bind_to_this_thread(&b).map_err(|e| detail!("bind B: {e}"))?;
    let (third, after) = enter(&registers)?;
    let fast = strata_rt::debug_counters()[4] - before;
    if (first.reason, second.reason, third.reason) != (Exit::Cpuid, Exit::Cpuid, Exit::Io)
        || after[Field::Rip as usize] != 0x1000
        || fast != u64::from(svm)
    {
        return Err(detail!(
            "exits {:?}, {:?}, {:?} (RIP {:#x}); {fast} fastpath entries (SVM: {svm})",
            first.reason,
            second.reason,
            third.reason,
            after[Field::Rip as usize],
        ));
    }
    Ok(detail!("CPUID twice (the second on the fastpath: {svm}), then B's OUT on the general path"))
}

static SIGNAL_TO: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Where the signalled guest counts its loops (in this task's mapping of its RAM).
static PROGRESS_AT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Once the guest has made progress, signals `SIGNAL_TO` once, then waits
/// for good on a notification nobody signals.
extern "C" fn signaller() -> ! {
    let progress = PROGRESS_AT.load(Ordering::SeqCst) as *const u32;
    // SAFETY: a word of the guest's RAM, mapped in this address space for
    // as long as the case runs; the guest writes it, so it is read volatile.
    while unsafe { progress.read_volatile() } == 0 {
        strata_rt::yield_now();
    }
    signal(SIGNAL_TO.load(Ordering::SeqCst));
    let idle = strata_rt::root::retype(ObjectType::Notification, 0).unwrap_or(0);
    loop {
        let _ = recv(idle);
    }
}

/// A signal on the notification bound to the VMM's thread ends `VmEnter`
/// with a `Notification` exit (as seL4's `VMEnter` does): at once if it is
/// already pending, and while a guest that never exits runs, when another
/// thread signals it. The guest's state survives either way.
fn vm_enter_ends_on_signal() -> Outcome {
    // At 0x3000: 1: inc dword [0x3100]; jmp 1b; its HLT is at 0x300a.
    let code = [0x66, 0xff, 0x06, 0x00, 0x31, 0xeb, 0xf9, 0x90, 0x90, 0x90, 0xf4];
    let mut guest = real_mode_guest_kept(0x3000, &code, 0)?;
    PROGRESS_AT.store(guest.ram()[0x3100..].as_ptr() as u64, Ordering::SeqCst);
    let notification = make(ObjectType::Notification, 0)?;
    check("bind", call(slot::TCB, Label::TcbBindNotification, &[], &[notification]))?;
    let outcome = signalled_entries(notification);
    check("unbind", call(slot::TCB, Label::TcbUnbindNotification, &[], &[]))?;
    outcome
}

fn signalled_entries(notification: CPtr) -> Outcome {
    let mut registers = [0u64; REGISTER_BLOCK_WORDS];
    registers[Field::Rip as usize] = 0x3000;
    registers[Field::Rflags as usize] = 2;
    registers[Field::Rbx as usize] = 0x5eed;
    // Pending before the entry: back at once, nothing run.
    signal(badged(notification, 0x11)?);
    let (exit, after) = enter(&registers)?;
    if (exit.reason, exit.qualification, exit.length) != (Exit::Notification, 0x11, 0) {
        return Err(detail!("with a signal pending: {exit:?}"));
    }
    if after[Field::Rip as usize] != 0x3000 || after[Field::Rbx as usize] != 0x5eed {
        return Err(detail!(
            "registers changed: RIP {:#x}, RBX {:#x}",
            after[Field::Rip as usize],
            after[Field::Rbx as usize]
        ));
    }
    // While the guest spins: a thread at the same priority gets its turn
    // at host ticks and, once the guest has counted, signals, and the VMM's
    // `VmEnter` ends. (It waits for the count: a tick can also come before
    // the guest's first instruction.)
    SIGNAL_TO.store(badged(notification, 0x20)?, Ordering::SeqCst);
    let worker = spawn_in(signaller, slot::VSPACE, 0)?;
    let mut after = after;
    after[Field::Rflags as usize] = INTERRUPTS_OFF;
    let (exit, after) = enter(&after)?;
    check("delete the signaller", cnode_op(Label::CNodeDelete, &[worker, DEPTH]))?;
    if (exit.reason, exit.qualification) != (Exit::Notification, 0x20) {
        return Err(detail!("while the guest ran: {exit:?}"));
    }
    if !(0x3000..0x3007).contains(&after[Field::Rip as usize]) {
        return Err(detail!("the spinning guest stopped at {:#x}", after[Field::Rip as usize]));
    }
    // The word was taken: the next entry runs the guest, now to its HLT.
    let mut registers = after;
    registers[Field::Rip as usize] = 0x300a;
    let (exit, after) = enter(&registers)?;
    if exit.reason != Exit::Hlt || after[Field::Rbx as usize] != 0x5eed {
        return Err(detail!("after the signals: {exit:?}, RBX {:#x}", after[Field::Rbx as usize]));
    }
    Ok(detail!("pending signal 0x11 ended VmEnter at once; 0x20 from another thread ended a spinning guest"))
}

/// A guest's XSETBV is the guest's alone: XCR0 is the VCPU's (reset value
/// 1, then what the guest set) and the host's is back after the exit, so
/// the VMM's AVX state still works and survives. The XSETBV exits where the
/// CPU intercepts it (Bochs, hardware: the VMM writes the field) and runs
/// in the guest where it does not (QEMU 7.2's TCG): the kernel keeps the
/// guest's XCR0 either way.
fn vm_guest_xcr0() -> Outcome {
    avx_usable()?;
    // At 0x4000, in real mode: xsetbv; xor ecx, ecx; xgetbv; cpuid; hlt
    // (the guest reads its XCR0 itself, as the CPU has it, into EAX).
    let code = [0x0f, 0x01, 0xd1, 0x66, 0x31, 0xc9, 0x0f, 0x01, 0xd0, 0x0f, 0xa2, 0xf4];
    let vcpu = real_mode_guest(0x4000, &code, 1 << 18)?;
    let reset = vcpu.read(Field::Xcr0 as u64).map_err(|e| detail!("XCR0: {e}"))?;
    let mut registers = [0u64; REGISTER_BLOCK_WORDS];
    registers[Field::Rip as usize] = 0x4000;
    registers[Field::Rflags as usize] = 2;
    registers[Field::Rax as usize] = 0b011;
    let (mut exit, mut after) = enter(&registers)?;
    let intercepted = exit.reason == Exit::Xsetbv;
    if intercepted {
        vcpu.write(&[(Field::Xcr0 as u64, after[Field::Rax as usize])]).map_err(|e| detail!("XCR0: {e}"))?;
        after[Field::Rip as usize] += exit.length;
        (exit, after) = enter(&after)?;
    }
    if exit.reason != Exit::Cpuid || after[Field::Rip as usize] != 0x4009 {
        return Err(detail!("expected CPUID after XSETBV: {exit:?} at {:#x}", after[Field::Rip as usize]));
    }
    let seen_by_guest = after[Field::Rax as usize];
    let guest = vcpu.read(Field::Xcr0 as u64).map_err(|e| detail!("XCR0: {e}"))?;
    // The host's XCR0 is back: AVX works here, and keeps its state.
    avx_usable()?;
    let seen = syscall_keeping_ymm6(strata_abi::syscall::Syscall::Yield, 0, YMM_MINE);
    if (reset, guest, seen_by_guest, seen) != (1, 0b011, 0b011, YMM_MINE) {
        return Err(detail!(
            "XCR0 {reset:#x} at reset, {guest:#x} after the guest's XSETBV, {seen_by_guest:#x} by its \
             XGETBV (3 expected); ymm6 {seen:x?}"
        ));
    }
    after[Field::Rip as usize] += exit.length;
    let (exit, _) = enter(&after)?;
    if exit.reason != Exit::Hlt {
        return Err(detail!("expected HLT: {exit:?}"));
    }
    Ok(detail!(
        "guest XCR0 1 -> 3 (XSETBV {}); host AVX intact",
        if intercepted { "exited" } else { "ran in the guest" }
    ))
}

/// A real-mode guest on a new VCPU with CR4.PKE set, running `code` at
/// 0x5000 with RAX `rax` (RCX and RDX 0) to its HLT; returns RAX then.
fn pkru_guest(code: &[u8], rax: u64) -> Result<u64, Detail> {
    real_mode_guest(0x5000, code, 1 << 22)?;
    let mut registers = [0u64; REGISTER_BLOCK_WORDS];
    registers[Field::Rip as usize] = 0x5000;
    registers[Field::Rflags as usize] = 2;
    registers[Field::Rax as usize] = rax;
    let (exit, after) = enter(&registers)?;
    if exit.reason != Exit::Hlt {
        return Err(detail!("expected HLT: {exit:?} at {:#x}", after[Field::Rip as usize]));
    }
    Ok(after[Field::Rax as usize])
}

/// PKRU, which a guest can write once it sets CR4.PKE, is switched with
/// its FPU state: a guest on another VCPU (another tenant's, say) reads
/// its own, not the last guest's.
fn vm_pkru_is_the_guests() -> Outcome {
    if core::arch::x86_64::__cpuid_count(7, 0).ecx & 1 << 3 == 0 {
        return Ok(detail!("the CPU has no protection keys (CPUID.07H:ECX.PKU): no PKRU to keep apart"));
    }
    // wrpkru; hlt — then rdpkru; hlt on a fresh VCPU.
    pkru_guest(&[0x0f, 0x01, 0xef, 0xf4], 0x5555_0000)?;
    let seen = pkru_guest(&[0x0f, 0x01, 0xee, 0xf4], 0)?;
    if seen != 0 {
        return Err(detail!("a new guest read PKRU {seen:#x}: the last guest's"));
    }
    Ok(detail!("one guest wrote PKRU 0x55550000; the next read 0"))
}

/// RFLAGS for a guest that host interrupts must stop: IF clear, so that
/// the guest's own interrupt flag cannot be what lets the host in. (Bochs
/// 2.7 holds external interrupts in VMX non-root operation while the
/// guest's IF is clear, where the SDM, vol. 3C §26.2, says it does not
/// matter: there the VMX-preemption timer, one time slice per entry, ends
/// the guest's run, and the kernel then takes the pending tick.)
const INTERRUPTS_OFF: u64 = 0x2;

static SPINS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

extern "C" fn spinner() -> ! {
    loop {
        SPINS.fetch_add(1, Ordering::Relaxed);
    }
}

/// A real-mode guest (CS at 0, HLT exiting, CR4 `cr4`) for this thread's
/// VCPU, on a new VCPU with 2 MiB of RAM, with `code` at `at`.
fn real_mode_guest(at: usize, code: &[u8], cr4: u64) -> Result<Cap<Vcpu>, Detail> {
    real_mode_guest_kept(at, code, cr4).map(|guest| guest.vcpu())
}

/// [`real_mode_guest`], kept whole (its VCPU bound to this thread).
fn real_mode_guest_kept(at: usize, code: &[u8], cr4: u64) -> Result<vm::Guest, Detail> {
    let mut guest = vm::Guest::new(2 << 20).map_err(|e| detail!("guest: {e}"))?;
    guest.ram()[at..at + code.len()].copy_from_slice(code);
    let cs = |part| segment_field(Segment::Cs, part);
    guest
        .vcpu()
        .write(&[
            (cs(SegmentPart::Selector), 0),
            (cs(SegmentPart::Base), 0),
            (Field::Cr4 as u64, cr4),
            (Field::Intercepts as u64, strata_abi::vcpu::intercept::HLT),
        ])
        .map_err(|e| detail!("state: {e}"))?;
    Ok(guest)
}

/// A real-mode guest whose code at `at` counts ECX down from `count` and
/// halts (the HLT is at `at + 10`): `mov ecx, count; 1: dec ecx; jnz 1b; hlt`.
fn counting_guest(at: usize, count: u32) -> Result<(), Detail> {
    let [c0, c1, c2, c3] = count.to_le_bytes();
    real_mode_guest(at, &[0x66, 0xb9, c0, c1, c2, c3, 0x66, 0x49, 0x75, 0xfc, 0xf4], 0).map(drop)
}

/// A guest that runs for 20 million instructions spans many host timer
/// ticks: the kernel takes each, the thread at the VMM's priority gets its
/// turns, and the guest goes on where it was each time, to its HLT.
fn vm_host_interrupts() -> Outcome {
    counting_guest(0x2000, 20_000_000)?;
    let worker = spawn_in(spinner, slot::VSPACE, 0)?;
    let mut registers = [0u64; REGISTER_BLOCK_WORDS];
    registers[Field::Rip as usize] = 0x2000;
    registers[Field::Rflags as usize] = INTERRUPTS_OFF;
    let before = SPINS.load(Ordering::Relaxed);
    let (exit, after) = enter(&registers)?;
    let spins = SPINS.load(Ordering::Relaxed) - before;
    check("delete the spinner", cnode_op(Label::CNodeDelete, &[worker, DEPTH]))?;
    if exit.reason != Exit::Hlt || after[Field::Rcx as usize] != 0 || after[Field::Rip as usize] != 0x200a {
        return Err(detail!(
            "{exit:?} with RCX {:#x} at {:#x}",
            after[Field::Rcx as usize],
            after[Field::Rip as usize]
        ));
    }
    if spins == 0 {
        return Err(detail!("the thread at the same priority never ran while the guest did"));
    }
    Ok(detail!("20M guest instructions to HLT; the other thread spun {spins} times meanwhile"))
}

/// After guests have run (the cases above), the GDT's limit is still the
/// GDT's: a VMX exit sets it to FFFFh, which would open the memory after
/// the GDT to user selectors. SGDT is allowed in user mode (no UMIP).
fn vm_exit_restores_gdt() -> Outcome {
    let mut gdtr = [0u8; 10];
    // SAFETY: SGDT stores ten bytes into the buffer, nothing else.
    unsafe { core::arch::asm!("sgdt [{}]", in(reg) gdtr.as_mut_ptr(), options(nostack)) };
    let limit = u16::from_le_bytes([gdtr[0], gdtr[1]]);
    // Null, kernel code and data, user data and code, a 16-byte TSS descriptor.
    if limit != 7 * 8 - 1 {
        return Err(detail!("GDT limit {limit:#x} after VM exits"));
    }
    Ok(detail!("GDT limit {limit:#x}"))
}

fn vcpu_errors() -> Outcome {
    let vcpu: Cap<Vcpu> = Cap::from_raw(make(ObjectType::Vcpu, 0)?);
    let space: Cap<GuestSpace> = Cap::from_raw(make(ObjectType::GuestSpace, 0)?);
    let result = |r: Result<(), InvocationError>| r.map(|()| [0u64; 4]);
    expect_error(
        "bind to a non-thread",
        result(vcpu.set_tcb(Cap::from_raw(slot::CNODE))),
        InvocationError::InvalidCapability { index: 1 },
    )?;
    expect_error(
        "a PML4 as guest space",
        result(vcpu.set_space(Cap::from_raw(slot::VSPACE))),
        InvocationError::InvalidCapability { index: 1 },
    )?;
    expect_error(
        "a GuestSpace without an ASID",
        result(vcpu.set_space(space)),
        InvocationError::InvalidCapability { index: 1 },
    )?;
    own::ASID_POOL.assign_guest(space).map_err(|e| detail!("ASID: {e}"))?;
    expect_error(
        "a GuestSpace for a VCPU bound to no thread",
        result(vcpu.set_space(space)),
        InvocationError::IllegalOperation,
    )?;
    expect_error(
        "a GuestSpace as a thread's address space",
        call(make(ObjectType::Tcb, 0)?, Label::TcbConfigure, &[0], &[slot::CNODE, space.raw()]),
        InvocationError::InvalidCapability { index: 2 },
    )?;
    expect_error(
        "non-canonical RIP",
        result(vcpu.write(&[(Field::Rip as u64, 1 << 47)])),
        InvocationError::InvalidArgument { index: 1 },
    )?;
    expect_error(
        "EFER reserved bit",
        result(vcpu.write(&[(Field::Rax as u64, 1), (Field::Efer as u64, 1 << 3)])),
        InvocationError::InvalidArgument { index: 3 },
    )?;
    expect_error(
        "no such field",
        result(vcpu.write(&[(50, 0)])),
        InvocationError::InvalidArgument { index: 0 },
    )?;
    let rax = vcpu.read(Field::Rax as u64).map_err(|e| detail!("read RAX: {e}"))?;
    if rax != 0 {
        return Err(detail!("RAX is {rax:#x}: a refused write changed it"));
    }
    expect_error(
        "VmEnter with no VCPU bound",
        vm::enter(None).map(|_| [0; 4]),
        InvocationError::IllegalOperation,
    )?;
    vcpu.set_tcb(own::TCB).map_err(|e| detail!("bind: {e}"))?;
    let exit = vm::enter(None).map_err(|e| detail!("VmEnter without a space: {e}"))?;
    if exit.reason != Exit::EntryFailure {
        return Err(detail!("VmEnter without a space: {exit:?}"));
    }
    // Deleting the VCPU unbinds it: VmEnter is refused again.
    check("delete the VCPU", cnode_op(Label::CNodeDelete, &[vcpu.raw(), DEPTH]))?;
    expect_error(
        "VmEnter after the delete",
        vm::enter(None).map(|_| [0; 4]),
        InvocationError::IllegalOperation,
    )?;
    Ok(detail!("binding, space, state and VmEnter errors refused; delete unbinds"))
}

/// Enters with `registers` and returns the exit and the registers after it.
fn enter(registers: &[u64; REGISTER_BLOCK_WORDS]) -> Result<(VmExit, [u64; REGISTER_BLOCK_WORDS]), Detail> {
    let exit = vm::enter(Some(registers)).map_err(|e| detail!("VmEnter: {e}"))?;
    Ok((exit, vm::registers()))
}

fn vm_exits() -> Outcome {
    let mut guest = vm::Guest::new(2 << 20).map_err(|e| detail!("guest: {e}"))?;
    let vcpu = guest.vcpu();
    // At 0x1000, in real mode: cpuid; hlt; mov [0], al (DS is moved past RAM first).
    guest.ram()[0x1000..0x1006].copy_from_slice(&[0x0f, 0xa2, 0xf4, 0xa2, 0x00, 0x00]);
    let cs = |part| segment_field(Segment::Cs, part);
    let ds = |part| segment_field(Segment::Ds, part);
    vcpu.write(&[
        (cs(SegmentPart::Selector), 0),
        (cs(SegmentPart::Base), 0),
        (ds(SegmentPart::Base), 0x100_0000),
        (Field::Intercepts as u64, strata_abi::vcpu::intercept::HLT),
    ])
    .map_err(|e| detail!("real-mode state: {e}"))?;
    let mut registers = [0u64; REGISTER_BLOCK_WORDS];
    registers[Field::Rip as usize] = 0x1000;
    registers[Field::Rflags as usize] = 2;
    registers[Field::Rax as usize] = 0x4000_0000;
    let (exit, after) = enter(&registers)?;
    if exit.reason != Exit::Cpuid || exit.length != 2 || after[Field::Rip as usize] != 0x1000 {
        return Err(detail!("first exit {exit:?} at {:#x}", after[Field::Rip as usize]));
    }
    if after[Field::Rax as usize] != 0x4000_0000 {
        return Err(detail!("the leaf in RAX came back as {:#x}", after[Field::Rax as usize]));
    }
    // The register block is not in the message words: a long reply (18
    // words, 10 of them through the IPC buffer) leaves it as it was.
    let mut read = [0u64; 18];
    strata_rt::call_long(slot::TCB, Label::TcbReadRegisters, &[], &[], &mut read)
        .map_err(|e| detail!("TcbReadRegisters: {e}"))?;
    if vm::registers() != after {
        return Err(detail!("a long reply changed the register block: {:x?}", vm::registers()));
    }
    registers = after;
    registers[Field::Rip as usize] += exit.length;
    let (exit, after) = enter(&registers)?;
    if exit.reason != Exit::Hlt || after[Field::Rip as usize] != 0x1002 {
        return Err(detail!("second exit {exit:?} at {:#x}", after[Field::Rip as usize]));
    }
    registers = after;
    registers[Field::Rip as usize] += exit.length;
    let (exit, after) = enter(&registers)?;
    let wanted = (Exit::NestedPageFault, 0x100_0000);
    if (exit.reason, exit.qualification2) != wanted || exit.qualification & access::WRITE == 0 {
        return Err(detail!("third exit {exit:?} at {:#x}", after[Field::Rip as usize]));
    }
    // EFER.LME with paging on but without PAE is a state neither vendor
    // enters (AMD APM vol. 2 §15.5.1; Intel SDM vol. 3C §27.3.1.1).
    vcpu.write(&[(Field::Cr0 as u64, 0x8000_0011), (Field::Cr4 as u64, 0), (Field::Efer as u64, 0x100)])
        .map_err(|e| detail!("CR0, CR4, EFER: {e}"))?;
    let (exit, _) = enter(&after)?;
    if exit.reason != Exit::InvalidGuestState {
        return Err(detail!("long mode without PAE: {exit:?}"));
    }
    Ok(detail!("real mode: CPUID, HLT, nested page fault at 16 MiB; long mode without PAE refused"))
}
