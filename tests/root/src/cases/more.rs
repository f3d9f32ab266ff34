//! Cases for every remaining invocation, decode error and thread
//! interaction: registers, retype limits, large revokes, priorities,
//! blocked-thread deletion, bound notifications, FPU state across IPC,
//! system-call faults, large frames, paging errors, rights, port widths
//! interrupt-line errors, CNode refusals, retype alignment, deleting a
//! CNode with contents and revoking an Untyped under a running thread.

use super::*;

static ORDER: AtomicU64 = AtomicU64::new(0);
static ENDPOINT: AtomicU64 = AtomicU64::new(0);
static NOTIFY: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static SPINS: AtomicU64 = AtomicU64::new(0);

/// Where the large-frame case maps its 2 MiB frame (PD entry 8 of the image's directory).
const LARGE_PAGE: u64 = 0x100_0000;
/// Pages of the rights case: in the scratch page table, clear of worker
/// stacks (upwards from 0x60_1000) and the pager's page (0x70_0000).
const RIGHTS_PAGE: u64 = 0x78_0000;

pub(super) fn run(suite: &mut Suite) {
    suite.case("user.tcb_read_registers", tcb_read_registers);
    suite.case("user.untyped_errors", untyped_errors);
    suite.case("user.untyped_revoke_resets", untyped_revoke_resets);
    suite.case("user.revoke_large_tree", revoke_large_tree);
    suite.case("user.delete_blocked_thread", delete_blocked_thread);
    suite.case("user.priority_order", priority_order);
    suite.case("user.wake_preempts_lower_priority", wake_preempts_lower_priority);
    suite.case("user.priority_errors", priority_errors);
    suite.case("user.configure_errors", configure_errors);
    suite.case("user.suspend_resume", suspend_resume);
    suite.case("user.bound_notification", bound_notification);
    suite.case("user.nb_send_drops", nb_send_drops);
    suite.case("user.fpu_across_ipc", fpu_across_ipc);
    suite.case("user.syscall_fault", syscall_fault);
    suite.case("user.frame_large", frame_large);
    suite.case("user.paging_errors", paging_errors);
    suite.case("user.rights_errors", rights_errors);
    suite.case("user.io_port_widths", io_port_widths);
    suite.case("user.irq_errors", irq_errors);
    suite.case("user.cnode_refusals", cnode_refusals);
    suite.case("user.retype_alignment", retype_alignment);
    suite.case("user.delete_cnode_with_contents", delete_cnode_with_contents);
    suite.case("user.yield_keeps_priority", yield_keeps_priority);
    suite.case("user.signal_before_wait", signal_before_wait);
    suite.case("user.revoke_untyped_with_thread", revoke_untyped_with_thread);
    suite.case("user.cap_transfer", cap_transfer);
}

fn missing() -> InvocationError {
    InvocationError::FailedLookup { source: true, failure: LookupFailure::MissingCapability { bits_left: 0 } }
}

/// `TcbReadRegisters` returns, through the message registers and the IPC
/// buffer, the 18 registers `TcbWriteRegisters` set (RFLAGS as sanitised).
fn tcb_read_registers() -> Outcome {
    let tcb = make(ObjectType::Tcb, 0)?;
    check("configure", call(tcb, Label::TcbConfigure, &[0], &[slot::CNODE, slot::VSPACE]))?;
    let mut registers: [u64; 18] = core::array::from_fn(|n| 0x1111 * (n as u64 + 1));
    registers[15] = 0x40_1000; // rip
    registers[16] = 0x7000_0000; // rsp
    registers[17] = 0x1 | 0x100; // CF and TF: TF is not a user flag
    check("write", call(tcb, Label::TcbWriteRegisters, &registers, &[]))?;
    let mut read = [0u64; 18];
    let length = strata_rt::call_long(tcb, Label::TcbReadRegisters, &[], &[], &mut read)
        .map_err(|e| detail!("read: {e}"))?;
    registers[17] = 0x1 | 0x200 | 0x2; // CF, IF (always set) and the reserved bit 1
    if length != 18 || read != registers {
        return Err(detail!("read {length} words: {read:x?}"));
    }
    Ok(detail!("18 registers round-trip; rflags sanitised to {:#x}", read[17]))
}

fn retype_words(kind: u64, size: u64, first: u64, count: u64) -> [u64; 6] {
    [kind, size, slot::CNODE, DEPTH, first, count]
}

/// Every retype refusal, with the error's data.
fn untyped_errors() -> Outcome {
    let small = make(ObjectType::Untyped, 12)?;
    let retype = |words: [u64; 6]| call(small, Label::UntypedRetype, &words, &[slot::CNODE]);
    expect_error(
        "unknown type",
        retype(retype_words(99, 0, fresh_slot(), 1)),
        InvocationError::InvalidArgument { index: 0 },
    )?;
    expect_error(
        "count 0",
        retype(retype_words(ObjectType::Endpoint as u64, 0, fresh_slot(), 0)),
        InvocationError::RangeError { min: 1, max: 256 },
    )?;
    expect_error(
        "past the CNode",
        retype(retype_words(ObjectType::Endpoint as u64, 0, 4095, 2)),
        InvocationError::RangeError { min: 0, max: 4095 },
    )?;
    let first = fresh_slot();
    fresh_slot();
    expect_error(
        "two frames from 4 KiB",
        retype(retype_words(ObjectType::Frame4K as u64, 0, first, 2)),
        InvocationError::NotEnoughMemory { available: 4096 },
    )?;
    check("one frame", retype(retype_words(ObjectType::Frame4K as u64, 0, first, 1)))?;
    expect_error(
        "exhausted",
        retype(retype_words(ObjectType::Endpoint as u64, 0, fresh_slot(), 1)),
        InvocationError::NotEnoughMemory { available: 0 },
    )?;
    expect_error(
        "not an Untyped",
        call(
            first,
            Label::UntypedRetype,
            &retype_words(ObjectType::Endpoint as u64, 0, fresh_slot(), 1),
            &[slot::CNODE],
        ),
        InvocationError::IllegalOperation,
    )?;
    expect_error(
        "destination not a CNode",
        call(small, Label::UntypedRetype, &retype_words(ObjectType::Endpoint as u64, 0, 0, 1), &[slot::TCB]),
        InvocationError::FailedLookup { source: false, failure: LookupFailure::InvalidRoot },
    )?;
    Ok(detail!("type count range memory exhaustion target destination"))
}

/// Revoking an Untyped deletes its objects and resets its watermark, so
/// the next object is at the same address.
fn untyped_revoke_resets() -> Outcome {
    let untyped = make(ObjectType::Untyped, 16)?;
    let frame_at = |what: &str| -> Result<u64, Detail> {
        let frame = fresh_slot();
        check(
            what,
            call(
                untyped,
                Label::UntypedRetype,
                &retype_words(ObjectType::Frame4K as u64, 0, frame, 1),
                &[slot::CNODE],
            ),
        )?;
        Ok(check("address", call(frame, Label::FrameGetAddress, &[], &[]))?[0])
    };
    let first = frame_at("first frame")?;
    let second = frame_at("second frame")?;
    if second != first + 0x1000 {
        return Err(detail!("second frame at {second:#x}, expected {:#x}", first + 0x1000));
    }
    check("revoke", call(slot::CNODE, Label::CNodeRevoke, &[untyped, DEPTH], &[]))?;
    let again = frame_at("after revoke")?;
    if again != first {
        return Err(detail!("after revoke the frame is at {again:#x}, expected {first:#x}"));
    }
    Ok(detail!("watermark reset to {first:#x}"))
}

/// A thousand copies in a CNode of their own, revoked in one call: more
/// than one preemption budget of work, so the kernel restarts the call
/// until it is done, and every copy is gone.
fn revoke_large_tree() -> Outcome {
    const COPIES: u64 = 1000;
    let endpoint = make(ObjectType::Endpoint, 0)?;
    let cnode = make(ObjectType::CNode, 10)?;
    for n in 0..COPIES {
        let words = [n, 10, endpoint, DEPTH, Rights::all().bits()];
        check("copy", call(cnode, Label::CNodeCopy, &words, &[slot::CNODE]))?;
    }
    let before = strata_rt::sys::timestamp();
    check("revoke", cnode_op(Label::CNodeRevoke, &[endpoint, DEPTH]))?;
    let cycles = strata_rt::sys::timestamp() - before;
    for n in (0..COPIES).step_by(37).chain([COPIES - 1]) {
        let moved = call(slot::CNODE, Label::CNodeMove, &[fresh_slot(), DEPTH, n, 10], &[cnode]);
        expect_error("a copy after the revoke", moved, missing())?;
    }
    check("the original stays", cnode_op(Label::CNodeCopy, &[fresh_slot(), DEPTH, endpoint, DEPTH, 15]))?;
    Ok(detail!("copies={COPIES} revoke_tsc={cycles}"))
}

extern "C" fn endpoint_receiver() -> ! {
    loop {
        let message = recv(ENDPOINT.load(Ordering::SeqCst));
        RECEIVED.store(message.words[0], Ordering::SeqCst);
    }
}

/// Deleting the last capability to a thread blocked on an endpoint takes
/// it off the endpoint's queue: a later message goes to the next receiver.
fn delete_blocked_thread() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    ENDPOINT.store(endpoint, Ordering::SeqCst);
    RECEIVED.store(0, Ordering::SeqCst);
    let first = spawn(endpoint_receiver)?;
    yield_now(); // it blocks on the endpoint
    check("delete the blocked thread", cnode_op(Label::CNodeDelete, &[first, DEPTH]))?;
    let second = spawn(endpoint_receiver)?;
    strata_rt::send(endpoint, 0, &[0x1234]); // waits for the second receiver
    yield_until(|| RECEIVED.load(Ordering::SeqCst) != 0);
    let received = RECEIVED.load(Ordering::SeqCst);
    check("suspend", call(second, Label::TcbSuspend, &[], &[]))?;
    if received != 0x1234 {
        return Err(detail!("the second receiver got {received:#x}"));
    }
    Ok(detail!("deleted_while_blocked=1 next_receiver_got=0x1234"))
}

fn log_order(id: u64) {
    let _ = ORDER.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |order| Some(order << 8 | id));
}

extern "C" fn low_priority() -> ! {
    log_order(1);
    signal(NOTIFY.load(Ordering::SeqCst));
    loop {
        recv(ENDPOINT.load(Ordering::SeqCst));
    }
}

extern "C" fn high_priority() -> ! {
    log_order(2);
    loop {
        recv(ENDPOINT.load(Ordering::SeqCst));
    }
}

/// Two runnable threads at priorities 100 and 200, made in that order:
/// when the root blocks, the higher one runs first.
fn priority_order() -> Outcome {
    ORDER.store(0, Ordering::SeqCst);
    ENDPOINT.store(make(ObjectType::Endpoint, 0)?, Ordering::SeqCst);
    let notification = make(ObjectType::Notification, 0)?;
    NOTIFY.store(notification, Ordering::SeqCst);
    let low = spawn_at(low_priority, slot::VSPACE, 0, 100)?;
    let high = spawn_at(high_priority, slot::VSPACE, 0, 200)?;
    recv(notification); // the root (255) blocks until the low thread signals
    let order = ORDER.load(Ordering::SeqCst);
    for thread in [low, high] {
        check("suspend", call(thread, Label::TcbSuspend, &[], &[]))?;
    }
    if order != 0x0201 {
        return Err(detail!("ran in order {order:#x}, expected 0x0201 (200 then 100)"));
    }
    Ok(detail!("order=200,100"))
}

static WAKE: AtomicU64 = AtomicU64::new(0);
static WOKEN_DONE: AtomicU64 = AtomicU64::new(0);
static STEP: AtomicU64 = AtomicU64::new(0);
static OBSERVED: AtomicU64 = AtomicU64::new(0);

/// Priority 200: waits, then records how far the low thread got.
extern "C" fn woken_high() -> ! {
    let _ = recv(WAKE.load(Ordering::SeqCst));
    OBSERVED.store(STEP.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
    signal(WOKEN_DONE.load(Ordering::SeqCst));
    loop {
        let _ = recv(WAKE.load(Ordering::SeqCst));
    }
}

/// Priority 50: wakes the high thread, then takes a step.
extern "C" fn waking_low() -> ! {
    signal(WAKE.load(Ordering::SeqCst));
    STEP.store(1, Ordering::SeqCst);
    loop {
        yield_now();
    }
}

/// A signal from a low-priority thread to a waiting high-priority one
/// switches to it at once: the low thread has not taken its next step
/// when the high one runs.
fn wake_preempts_lower_priority() -> Outcome {
    STEP.store(0, Ordering::SeqCst);
    OBSERVED.store(0, Ordering::SeqCst);
    let wake = make(ObjectType::Notification, 0)?;
    WAKE.store(badged(wake, 1)?, Ordering::SeqCst);
    let done = make(ObjectType::Notification, 0)?;
    WOKEN_DONE.store(badged(done, 1)?, Ordering::SeqCst);
    let high = spawn_at(woken_high, slot::VSPACE, 0, 200)?;
    let low = spawn_at(waking_low, slot::VSPACE, 0, 50)?;
    recv(done); // the root (255) blocks until the high thread reports
    for thread in [low, high] {
        check("suspend", call(thread, Label::TcbSuspend, &[], &[]))?;
    }
    match OBSERVED.load(Ordering::SeqCst) {
        1 => Ok(detail!("high_ran_before_low_continued=1")),
        2 => Err(detail!("the low thread went on after waking the high one")),
        other => Err(detail!("observed {other}")),
    }
}

/// Priorities are limited by the authority's maximum controlled priority.
fn priority_errors() -> Outcome {
    let limited = make(ObjectType::Tcb, 0)?;
    check("set 50/50", call(limited, Label::TcbSetPriority, &[50, 50], &[slot::TCB]))?;
    let other = make(ObjectType::Tcb, 0)?;
    expect_error(
        "above the authority's limit",
        call(other, Label::TcbSetPriority, &[60, 0], &[limited]),
        InvocationError::RangeError { min: 0, max: 50 },
    )?;
    check("within the limit", call(other, Label::TcbSetPriority, &[50, 10], &[limited]))?;
    expect_error(
        "above 255",
        call(other, Label::TcbSetPriority, &[256, 0], &[slot::TCB]),
        InvocationError::RangeError { min: 0, max: 255 },
    )?;
    expect_error(
        "authority not a TCB",
        call(other, Label::TcbSetPriority, &[1, 1], &[slot::CNODE]),
        InvocationError::InvalidCapability { index: 1 },
    )?;
    expect_error(
        "truncated",
        call(other, Label::TcbSetPriority, &[1], &[slot::TCB]),
        InvocationError::TruncatedMessage { needed: 2 },
    )?;
    Ok(detail!("limit range authority truncation"))
}

/// `TcbConfigure` refusals and `TcbResume` without an address space.
fn configure_errors() -> Outcome {
    let tcb = make(ObjectType::Tcb, 0)?;
    expect_error(
        "resume unconfigured",
        call(tcb, Label::TcbResume, &[], &[]),
        InvocationError::IllegalOperation,
    )?;
    expect_error(
        "CSpace not a CNode",
        call(tcb, Label::TcbConfigure, &[0], &[slot::TCB, slot::VSPACE]),
        InvocationError::InvalidCapability { index: 1 },
    )?;
    expect_error(
        "VSpace not a PML4",
        call(tcb, Label::TcbConfigure, &[0], &[slot::CNODE, slot::CNODE]),
        InvocationError::InvalidCapability { index: 2 },
    )?;
    let buffer = strata_rt::sys::ipc_buffer_address();
    expect_error(
        "misaligned IPC buffer",
        call(tcb, Label::TcbConfigure, &[buffer + 4], &[slot::CNODE, slot::VSPACE, slot::IPC_BUFFER]),
        InvocationError::AlignmentError,
    )?;
    expect_error(
        "buffer frame mapped elsewhere",
        call(tcb, Label::TcbConfigure, &[buffer + 0x1000], &[slot::CNODE, slot::VSPACE, slot::IPC_BUFFER]),
        InvocationError::InvalidCapability { index: 3 },
    )?;
    check("configure", call(tcb, Label::TcbConfigure, &[0], &[slot::CNODE, slot::VSPACE]))?;
    expect_error(
        "configure twice",
        call(tcb, Label::TcbConfigure, &[0], &[slot::CNODE, slot::VSPACE]),
        InvocationError::DeleteFirst,
    )?;
    Ok(detail!("resume cspace vspace alignment buffer twice"))
}

extern "C" fn counting_worker() -> ! {
    loop {
        SPINS.fetch_add(1, Ordering::SeqCst);
        yield_now();
    }
}

/// A suspended thread does not run; resumed, it does again.
fn suspend_resume() -> Outcome {
    SPINS.store(0, Ordering::SeqCst);
    let worker = spawn(counting_worker)?;
    yield_until(|| SPINS.load(Ordering::SeqCst) != 0);
    let running = SPINS.load(Ordering::SeqCst);
    check("suspend", call(worker, Label::TcbSuspend, &[], &[]))?;
    let stopped = SPINS.load(Ordering::SeqCst);
    for _ in 0..5 {
        yield_now();
    }
    let still = SPINS.load(Ordering::SeqCst);
    check("resume", call(worker, Label::TcbResume, &[], &[]))?;
    yield_until(|| SPINS.load(Ordering::SeqCst) > still);
    let resumed = SPINS.load(Ordering::SeqCst);
    check("suspend again", call(worker, Label::TcbSuspend, &[], &[]))?;
    if running == 0 || still != stopped || resumed <= still {
        return Err(detail!(
            "counts: running {running}, stopped {stopped}, later {still}, resumed {resumed}"
        ));
    }
    Ok(detail!("ran={running} frozen_at={stopped} resumed_to={resumed}"))
}

/// A thread blocked receiving on an endpoint is woken by a signal on its
/// bound notification, with the notification's word as the badge.
fn bound_notification() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    ENDPOINT.store(endpoint, Ordering::SeqCst);
    RECEIVED.store(0, Ordering::SeqCst);
    let notification = make(ObjectType::Notification, 0)?;
    let worker = spawn(bound_receiver)?;
    check("bind", call(worker, Label::TcbBindNotification, &[], &[notification]))?;
    expect_error(
        "bind twice",
        call(worker, Label::TcbBindNotification, &[], &[notification]),
        InvocationError::IllegalOperation,
    )?;
    yield_now(); // the worker blocks on the endpoint
    signal(badged(notification, 0x30)?);
    yield_until(|| RECEIVED.load(Ordering::SeqCst) != 0);
    let got = RECEIVED.load(Ordering::SeqCst);
    check("unbind", call(worker, Label::TcbUnbindNotification, &[], &[]))?;
    check("suspend", call(worker, Label::TcbSuspend, &[], &[]))?;
    if got != 0x30 {
        return Err(detail!("the bound thread woke with badge {got:#x}, expected 0x30"));
    }
    Ok(detail!("woken_by_bound_notification badge=0x30"))
}

extern "C" fn bound_receiver() -> ! {
    loop {
        let message = recv(ENDPOINT.load(Ordering::SeqCst));
        RECEIVED.store(message.badge, Ordering::SeqCst);
    }
}

/// `NbSend` with no receiver waiting drops the message and returns; a
/// receiver that arrives later gets only what is sent after it waits.
fn nb_send_drops() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    ENDPOINT.store(endpoint, Ordering::SeqCst);
    RECEIVED.store(0, Ordering::SeqCst);
    let _ = strata_rt::sys::syscall(
        strata_abi::syscall::Syscall::NbSend,
        endpoint,
        1,
        [0xdead, 0, 0, 0, 0, 0, 0, 0],
    );
    let worker = spawn(endpoint_receiver)?;
    yield_now();
    let after_drop = RECEIVED.load(Ordering::SeqCst);
    // Until the receiver is waiting these are dropped too; once it is, one arrives.
    yield_until(|| {
        let words = [0xbeef, 0, 0, 0, 0, 0, 0, 0];
        let _ = strata_rt::sys::syscall(strata_abi::syscall::Syscall::NbSend, endpoint, 1, words);
        RECEIVED.load(Ordering::SeqCst) != 0
    });
    let delivered = RECEIVED.load(Ordering::SeqCst);
    check("suspend", call(worker, Label::TcbSuspend, &[], &[]))?;
    if after_drop != 0 || delivered != 0xbeef {
        return Err(detail!("after the dropped send {after_drop:#x}, after the second {delivered:#x}"));
    }
    Ok(detail!("dropped=0xdead delivered=0xbeef"))
}

/// A server that clobbers ymm6 before each ReplyRecv.
extern "C" fn sse_server() -> ! {
    let endpoint = ENDPOINT.load(Ordering::SeqCst);
    recv(endpoint);
    loop {
        syscall_keeping_ymm6(strata_abi::syscall::Syscall::ReplyRecv, endpoint, YMM_THEIRS);
    }
}

/// ymm6 (SSE and AVX state) survives a Call to a server that sets its own.
fn fpu_across_ipc() -> Outcome {
    avx_usable()?;
    let endpoint = make(ObjectType::Endpoint, 0)?;
    ENDPOINT.store(endpoint, Ordering::SeqCst);
    let server = spawn(sse_server)?;
    let mut seen = [[0u64; 2]; 3];
    for value in seen.iter_mut() {
        *value = syscall_keeping_ymm6(strata_abi::syscall::Syscall::Call, endpoint, YMM_MINE);
    }
    check("suspend", call(server, Label::TcbSuspend, &[], &[]))?;
    if seen.iter().any(|&v| v != YMM_MINE) {
        return Err(detail!("ymm6 after calls: {seen:x?}"));
    }
    Ok(detail!("ymm6 (low and upper lane) preserved across 3 calls"))
}

extern "C" fn bad_syscall() -> ! {
    // SAFETY: system call 77 does not exist: the thread must fault.
    unsafe {
        core::arch::asm!("syscall", in("rax") 77u64, in("rdi") 0x5eu64, options(noreturn));
    }
}

/// An unknown system call is a fault message (label 2: number, RDI, RIP,
/// 0, RSP) to the thread's fault endpoint; the handler deletes the thread.
fn syscall_fault() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    let thread = spawn_in(bad_syscall, slot::VSPACE, endpoint)?;
    let fault = recv(endpoint);
    check("delete the faulting thread", cnode_op(Label::CNodeDelete, &[thread, DEPTH]))?;
    let [number, rdi, rip, _, ..] = fault.words;
    let entry = bad_syscall as *const () as u64;
    if fault.label != 2 || number != 77 || rdi != 0x5e || !(entry..entry + 64).contains(&rip) {
        return Err(detail!("fault label {} words {:x?}", fault.label, fault.words));
    }
    Ok(detail!("label=2 number=77 rip={rip:#x}"))
}

/// A 2 MiB frame maps in a page directory; both ends are usable and its
/// physical address is 2 MiB aligned.
fn frame_large() -> Outcome {
    // From whichever Untyped has an aligned 2 MiB left.
    let frame = strata_rt::root::retype(ObjectType::Frame2M, 0).map_err(|e| detail!("retype: {e}"))?;
    let rw = (Rights::READ | Rights::WRITE).bits();
    expect_error(
        "misaligned",
        call(frame, Label::FrameMap, &[LARGE_PAGE + 0x1000, rw, 0], &[slot::VSPACE]),
        InvocationError::AlignmentError,
    )?;
    check("map", call(frame, Label::FrameMap, &[LARGE_PAGE, rw, 0], &[slot::VSPACE]))?;
    let page = LARGE_PAGE as *mut u64;
    let last = (2 << 20) / 8 - 1;
    // SAFETY: the 2 MiB frame was just mapped read-write at LARGE_PAGE.
    let (first, end) = unsafe {
        page.write_volatile(0x1111);
        page.add(last).write_volatile(0x2222);
        (page.read_volatile(), page.add(last).read_volatile())
    };
    let [physical, ..] = check("address", call(frame, Label::FrameGetAddress, &[], &[]))?;
    check("unmap", call(frame, Label::FrameUnmap, &[], &[]))?;
    if (first, end) != (0x1111, 0x2222) || physical % (2 << 20) != 0 {
        return Err(detail!("read {first:#x} {end:#x}, physical {physical:#x}"));
    }
    Ok(detail!("physical={physical:#x}"))
}

/// Mapping without the tables above reports the missing level; mapping
/// over an occupied entry is refused.
fn paging_errors() -> Outcome {
    let frame = make(ObjectType::Frame4K, 0)?;
    let r = Rights::READ.bits();
    let missing_level = |address: u64, bits_left: u8| {
        expect_error(
            "no table",
            call(frame, Label::FrameMap, &[address, r, 0], &[slot::VSPACE]),
            InvocationError::FailedLookup {
                source: false,
                failure: LookupFailure::MissingCapability { bits_left },
            },
        )
    };
    missing_level(0x140_0000, 21)?; // no page table
    missing_level(0x4000_0000, 30)?; // no page directory
    missing_level(0x80_0000_0000, 39)?; // no PDPT
    let table = make(ObjectType::PageTable, 0)?;
    expect_error(
        "table over an occupied entry",
        call(table, Label::PageTableMap, &[SCRATCH_PAGE], &[slot::VSPACE]),
        InvocationError::DeleteFirst,
    )?;
    expect_error(
        "at the user top",
        call(frame, Label::FrameMap, &[strata_abi::object::USER_TOP, r, 0], &[slot::VSPACE]),
        InvocationError::InvalidArgument { index: 0 },
    )?;
    Ok(detail!("bits_left 21 30 39; occupied; user top"))
}

/// Rights only shrink: a read-only frame cannot be mapped writable, and
/// write-and-execute is refused.
fn rights_errors() -> Outcome {
    let frame = make(ObjectType::Frame4K, 0)?;
    let read_only = fresh_slot();
    check(
        "mint read-only",
        cnode_op(Label::CNodeMint, &[read_only, DEPTH, frame, DEPTH, Rights::READ.bits(), 0]),
    )?;
    let rw = (Rights::READ | Rights::WRITE).bits();
    expect_error(
        "no READ",
        call(read_only, Label::FrameMap, &[RIGHTS_PAGE, Rights::WRITE.bits(), 0], &[slot::VSPACE]),
        InvocationError::InvalidArgument { index: 1 },
    )?;
    let executable = strata_abi::object::VmAttributes::EXECUTABLE.bits();
    expect_error(
        "write and execute",
        call(frame, Label::FrameMap, &[RIGHTS_PAGE, rw, executable], &[slot::VSPACE]),
        InvocationError::InvalidArgument { index: 2 },
    )?;
    // Mapped through the read-only copy with READ|WRITE asked: read-only.
    check("map", call(read_only, Label::FrameMap, &[RIGHTS_PAGE, rw, 0], &[slot::VSPACE]))?;
    // SAFETY: the frame is mapped (read-only) at this address; reading is fine.
    let _ = unsafe { ((RIGHTS_PAGE) as *const u64).read_volatile() };
    let copy = fresh_slot();
    check("copy with fewer rights", cnode_op(Label::CNodeCopy, &[copy, DEPTH, read_only, DEPTH, rw]))?;
    expect_error(
        "rights never grow",
        call(copy, Label::FrameMap, &[RIGHTS_PAGE + 0x1000, Rights::WRITE.bits(), 0], &[slot::VSPACE]),
        InvocationError::InvalidArgument { index: 1 },
    )?;
    check("unmap", call(read_only, Label::FrameUnmap, &[], &[]))?;
    Ok(detail!("read-only stays read-only; W+X refused"))
}

/// 16- and 32-bit port accesses: the PCI configuration address register
/// (0xcf8) holds a 32-bit value, and the host bridge at 00:00.0 reports
/// Intel's vendor ID (0x8086) on both QEMU and Bochs (i440FX).
fn io_port_widths() -> Outcome {
    let pci = strata_rt::io::issue(0xcf8, 0xcff).map_err(|e| detail!("issue: {e}"))?;
    let access = || -> Result<(u32, u16, u16), InvocationError> {
        pci.write_u32(0xcf8, 0x8000_0000)?;
        let address = pci.read_u32(0xcf8)?;
        let vendor = pci.read_u16(0xcfc)?;
        let device = pci.read_u16(0xcfe)?;
        Ok((address, vendor, device))
    };
    let (address, vendor, device) = access().map_err(|e| detail!("access: {e}"))?;
    expect_error(
        "4 bytes at the last port",
        pci.read_u32(0xcfd).map(|_| [0; 4]),
        InvocationError::RangeError { min: 0xcf8, max: 0xcfc },
    )?;
    expect_error(
        "width 3",
        call(pci.0, Label::IoPortIn, &[0xcf8, 3], &[]),
        InvocationError::InvalidArgument { index: 1 },
    )?;
    if address != 0x8000_0000 || vendor != 0x8086 {
        return Err(detail!("address register {address:#x}, vendor {vendor:#x}"));
    }
    Ok(detail!("host bridge {vendor:04x}:{device:04x}"))
}

/// Interrupt-line refusals.
fn irq_errors() -> Outcome {
    let get = |words: &[u64]| call(slot::IRQ_CONTROL, Label::IrqControlGetLine, words, &[slot::CNODE]);
    expect_error(
        "line 24",
        get(&[24, 0, 0, fresh_slot(), DEPTH]),
        InvocationError::RangeError { min: 0, max: 23 },
    )?;
    expect_error(
        "trigger flag 2",
        get(&[10, 2, 0, fresh_slot(), DEPTH]),
        InvocationError::InvalidArgument { index: 1 },
    )?;
    expect_error("truncated", get(&[10, 1, 1]), InvocationError::TruncatedMessage { needed: 5 })?;
    let handler = strata_rt::irq::line(10, true, true).map_err(|e| detail!("line 10: {e}"))?;
    expect_error(
        "line 10 again",
        strata_rt::irq::line(10, true, true).map(|_| [0; 4]),
        InvocationError::RevokeFirst,
    )?;
    expect_error(
        "bind an endpoint",
        call(handler.0, Label::IrqHandlerSetNotification, &[], &[make(ObjectType::Endpoint, 0)?]),
        InvocationError::InvalidCapability { index: 1 },
    )?;
    check("delete the handler", cnode_op(Label::CNodeDelete, &[handler.0, DEPTH]))?;
    let again = strata_rt::irq::line(10, true, true).map_err(|e| detail!("line 10 after delete: {e}"))?;
    check("delete", cnode_op(Label::CNodeDelete, &[again.0, DEPTH]))?;
    Ok(detail!("range flag truncation busy type; freed on delete"))
}

/// CNode refusals: copying an Untyped, copying from an empty slot, into
/// an occupied slot, and mutating an endpoint with data.
fn cnode_refusals() -> Outcome {
    let untyped = strata_rt::boot_info().untyped_slots.start;
    expect_error(
        "copy an Untyped",
        cnode_op(Label::CNodeCopy, &[fresh_slot(), DEPTH, untyped, DEPTH, 15]),
        InvocationError::IllegalOperation,
    )?;
    expect_error(
        "copy from empty",
        cnode_op(Label::CNodeCopy, &[fresh_slot(), DEPTH, 4000, DEPTH, 15]),
        missing(),
    )?;
    let endpoint = make(ObjectType::Endpoint, 0)?;
    expect_error(
        "copy into occupied",
        cnode_op(Label::CNodeCopy, &[slot::TCB, DEPTH, endpoint, DEPTH, 15]),
        InvocationError::DeleteFirst,
    )?;
    expect_error(
        "mutate an endpoint with data",
        cnode_op(Label::CNodeMutate, &[fresh_slot(), DEPTH, endpoint, DEPTH, 5]),
        InvocationError::IllegalOperation,
    )?;
    check(
        "mutate with no data is a move",
        cnode_op(Label::CNodeMutate, &[fresh_slot(), DEPTH, endpoint, DEPTH, 0]),
    )?;
    expect_error(
        "the source is empty after",
        cnode_op(Label::CNodeCopy, &[fresh_slot(), DEPTH, endpoint, DEPTH, 15]),
        missing(),
    )?;
    Ok(detail!("untyped empty occupied mutate"))
}

/// Objects are aligned to their size: a frame retyped after an endpoint
/// starts at the next 4 KiB boundary of the Untyped.
fn retype_alignment() -> Outcome {
    let untyped = make(ObjectType::Untyped, 14)?;
    let retype = |kind: ObjectType| -> Result<CPtr, Detail> {
        let at = fresh_slot();
        check(
            "retype",
            call(untyped, Label::UntypedRetype, &retype_words(kind as u64, 0, at, 1), &[slot::CNODE]),
        )?;
        Ok(at)
    };
    let first = retype(ObjectType::Frame4K)?;
    let base = check("address", call(first, Label::FrameGetAddress, &[], &[]))?[0];
    retype(ObjectType::Endpoint)?;
    let second = retype(ObjectType::Frame4K)?;
    let next = check("address", call(second, Label::FrameGetAddress, &[], &[]))?[0];
    if base % (1 << 14) != 0 || next != base + 0x2000 {
        return Err(detail!("frames at {base:#x} and {next:#x}, expected the second at base + 0x2000"));
    }
    Ok(detail!("endpoint at base+0x1000 pushes the next frame to base+0x2000"))
}

/// Deleting a CNode deletes what is in it: an endpoint retyped straight
/// into it goes too, so its Untyped has no children left and resets.
fn delete_cnode_with_contents() -> Outcome {
    let untyped = make(ObjectType::Untyped, 16)?;
    let cnode = fresh_slot();
    check(
        "CNode",
        call(
            untyped,
            Label::UntypedRetype,
            &retype_words(ObjectType::CNode as u64, 4, cnode, 1),
            &[slot::CNODE],
        ),
    )?;
    // An endpoint into slot 3 of the new CNode, which only that CNode holds.
    let words = [ObjectType::Endpoint as u64, 0, cnode, DEPTH, 3, 1];
    check("endpoint into the CNode", call(untyped, Label::UntypedRetype, &words, &[slot::CNODE]))?;
    let frame = fresh_slot();
    let frame_words = retype_words(ObjectType::Frame4K as u64, 0, frame, 1);
    check("frame", call(untyped, Label::UntypedRetype, &frame_words, &[slot::CNODE]))?;
    let before = check("address", call(frame, Label::FrameGetAddress, &[], &[]))?[0];
    check("delete the frame", cnode_op(Label::CNodeDelete, &[frame, DEPTH]))?;
    check("delete the CNode", cnode_op(Label::CNodeDelete, &[cnode, DEPTH]))?;
    // Nothing from the Untyped is left, so the next object starts at its base.
    check("frame again", call(untyped, Label::UntypedRetype, &frame_words, &[slot::CNODE]))?;
    let after = check("address", call(frame, Label::FrameGetAddress, &[], &[]))?[0];
    if after >= before || after % (1 << 16) != 0 {
        return Err(detail!("frame at {after:#x} after the delete, {before:#x} before"));
    }
    Ok(detail!("untyped reset to {after:#x} once the CNode and its endpoint went"))
}

extern "C" fn counting_below() -> ! {
    loop {
        SPINS.fetch_add(1, Ordering::SeqCst);
        signal(NOTIFY.load(Ordering::SeqCst));
        yield_now();
    }
}

/// A yield never runs a lower-priority thread; blocking does.
fn yield_keeps_priority() -> Outcome {
    SPINS.store(0, Ordering::SeqCst);
    let notification = make(ObjectType::Notification, 0)?;
    NOTIFY.store(notification, Ordering::SeqCst);
    let worker = spawn_at(counting_below, slot::VSPACE, 0, 100)?;
    for _ in 0..5 {
        yield_now();
    }
    let after_yields = SPINS.load(Ordering::SeqCst);
    recv(notification); // blocks: the worker runs and signals
    let after_blocking = SPINS.load(Ordering::SeqCst);
    check("suspend", call(worker, Label::TcbSuspend, &[], &[]))?;
    if after_yields != 0 || after_blocking == 0 {
        return Err(detail!("worker ran {after_yields} times during yields, {after_blocking} after"));
    }
    Ok(detail!("0 runs while the root (255) yielded; ran once it blocked"))
}

/// A signal with nobody waiting is kept: the next wait returns at once
/// with the badge.
fn signal_before_wait() -> Outcome {
    let notification = make(ObjectType::Notification, 0)?;
    signal(badged(notification, 0x5)?);
    signal(badged(notification, 0x40)?);
    let message = recv(notification);
    if message.badge != 0x45 || poll(notification) != 0 {
        return Err(detail!("waited and got {:#x}", message.badge));
    }
    Ok(detail!("badge=0x45 without blocking"))
}

extern "C" fn untyped_spinner() -> ! {
    loop {
        SPINS.fetch_add(1, Ordering::SeqCst);
        yield_now();
    }
}

/// Revoking an Untyped destroys a running thread made from it (and its
/// stack frame): the thread never runs again.
fn revoke_untyped_with_thread() -> Outcome {
    SPINS.store(0, Ordering::SeqCst);
    let untyped = make(ObjectType::Untyped, 16)?;
    let tcb = fresh_slot();
    check(
        "TCB from the Untyped",
        call(untyped, Label::UntypedRetype, &retype_words(ObjectType::Tcb as u64, 0, tcb, 1), &[slot::CNODE]),
    )?;
    check("configure", call(tcb, Label::TcbConfigure, &[0], &[slot::CNODE, slot::VSPACE]))?;
    check("priority", call(tcb, Label::TcbSetPriority, &[255, 255], &[slot::TCB]))?;
    let stack = make(ObjectType::Frame4K, 0)?;
    let rw = (Rights::READ | Rights::WRITE).bits();
    let stack_page = 0x78_a000;
    check("map stack", call(stack, Label::FrameMap, &[stack_page, rw, 0], &[slot::VSPACE]))?;
    let mut registers = [0u64; 18];
    registers[15] = untyped_spinner as *const () as u64;
    registers[16] = stack_page + 4096 - 8;
    registers[17] = 0x202;
    check("registers", call(tcb, Label::TcbWriteRegisters, &registers, &[]))?;
    check("resume", call(tcb, Label::TcbResume, &[], &[]))?;
    yield_until(|| SPINS.load(Ordering::SeqCst) != 0);
    let running = SPINS.load(Ordering::SeqCst);
    check("revoke the Untyped", cnode_op(Label::CNodeRevoke, &[untyped, DEPTH]))?;
    let at_revoke = SPINS.load(Ordering::SeqCst);
    for _ in 0..5 {
        yield_now();
    }
    let later = SPINS.load(Ordering::SeqCst);
    expect_error("the TCB capability is gone", call(tcb, Label::TcbSuspend, &[], &[]), missing())?;
    check("unmap stack", call(stack, Label::FrameUnmap, &[], &[]))?;
    if running == 0 || later != at_revoke {
        return Err(detail!("counts: running {running}, at revoke {at_revoke}, later {later}"));
    }
    Ok(detail!("thread ran {running} times, none after the revoke"))
}

static TRANSFER_ENDPOINT: AtomicU64 = AtomicU64::new(0);
static RECEIVE_SLOT: AtomicU64 = AtomicU64::new(0);

/// Names its receive slot once, then echoes each request's label.
extern "C" fn transfer_server() -> ! {
    let endpoint = TRANSFER_ENDPOINT.load(Ordering::SeqCst);
    strata_rt::sys::set_receive_slot(slot::CNODE, RECEIVE_SLOT.load(Ordering::SeqCst), DEPTH);
    let mut message = recv(endpoint);
    loop {
        message = reply_recv(endpoint, message.label, &[]);
    }
}

/// Capability transfer: a server in its own address space, with its own
/// IPC buffer naming a receive slot, gets a badged notification sent
/// through an endpoint with GRANT (and the copy signals the original's
/// word with the badge); through an endpoint without GRANT the call still
/// completes but nothing arrives.
fn cap_transfer() -> Outcome {
    let pml4 = second_space()?;
    // Its own IPC buffer, at the address the SDK uses, in its own space.
    let ipc_buffer = strata_rt::sys::ipc_buffer_address();
    strata_rt::root::tables_for(pml4, ipc_buffer).map_err(|e| detail!("buffer tables: {e}"))?;
    let endpoint = make(ObjectType::Endpoint, 0)?;
    TRANSFER_ENDPOINT.store(endpoint, Ordering::SeqCst);
    let receive = fresh_slot();
    RECEIVE_SLOT.store(receive, Ordering::SeqCst);
    let server = spawn_thread(ThreadSpec {
        entry: transfer_server,
        vspace: pml4,
        stack_page: next_stack_page(),
        ipc_buffer,
        fault_endpoint: 0,
        priority: 255,
    })?;
    let notification = make(ObjectType::Notification, 0)?;
    let sent = badged(notification, 0x8)?;

    let reply = strata_rt::ipc_call_with_caps(endpoint, 3, &[], &[sent]);
    let copy = fresh_slot();
    let arrived = cnode_op(Label::CNodeCopy, &[copy, DEPTH, receive, DEPTH, Rights::all().bits()]);
    if arrived.is_ok() {
        signal(copy);
    }
    let word = poll(notification);

    let moved = cnode_op(Label::CNodeMove, &[fresh_slot(), DEPTH, receive, DEPTH]);
    let no_grant = fresh_slot();
    let rights = Rights::READ | Rights::WRITE | Rights::GRANT_REPLY;
    check(
        "mint without GRANT",
        cnode_op(Label::CNodeMint, &[no_grant, DEPTH, endpoint, DEPTH, rights.bits(), 0]),
    )?;
    let second = strata_rt::ipc_call_with_caps(no_grant, 4, &[], &[sent]);
    let nothing = cnode_op(Label::CNodeCopy, &[fresh_slot(), DEPTH, receive, DEPTH, Rights::all().bits()]);
    check("suspend", call(server, Label::TcbSuspend, &[], &[]))?;

    check("the capability arrived with GRANT", arrived)?;
    check("move it out", moved)?;
    if reply.label != 3 || word != 0x8 {
        return Err(detail!("reply label {}, the received copy signalled {word:#x}", reply.label));
    }
    if second.label != 4 {
        return Err(detail!("the call without GRANT got label {}", second.label));
    }
    expect_error("without GRANT nothing arrives", nothing, missing())?;
    Ok(detail!("granted copy signals 0x8; without GRANT the slot stays empty"))
}
