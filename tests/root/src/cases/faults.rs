//! Cases for faults and their delivery, guarded lookups, address-space
//! edge cases and scheduling: exceptions of each kind to a handler, an
//! `INT n` the IDT refuses, IPC on a capability without the right, a
//! deleted endpoint restarting its waiters, unmapping seen by a running
//! thread (TLB), remapping with new rights, ASID refusals, guarded CNode
//! lookups, a server with many clients, round robin, deleting a running
//! thread and SSE state across preemption.

use super::*;

static SPIN_COUNT: AtomicU64 = AtomicU64::new(0);
static ROUND_LOG: AtomicU64 = AtomicU64::new(0);
static CLIENT_ENDPOINTS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static NEXT_CLIENT: AtomicU64 = AtomicU64::new(0);
static TARGET: AtomicU64 = AtomicU64::new(0);

/// The page the unmap case maps, reads through another thread, and unmaps.
const UNMAP_PAGE: u64 = 0x78_8000;
/// The page the remap case uses.
const REMAP_PAGE: u64 = 0x78_9000;

pub(super) fn run(suite: &mut Suite) {
    suite.case("user.exception_divide", exception_divide);
    suite.case("user.exception_breakpoint", exception_breakpoint);
    suite.case("user.exception_privileged", exception_privileged);
    suite.case("user.int_gate_refused", int_gate_refused);
    suite.case("user.ipc_without_right_faults", ipc_without_right_faults);
    suite.case("user.deleted_endpoint_restarts_waiter", deleted_endpoint_restarts_waiter);
    suite.case("user.unmap_seen_by_thread", unmap_seen_by_thread);
    suite.case("user.frame_remap_rights", frame_remap_rights);
    suite.case("user.asid_errors", asid_errors);
    suite.case("user.guarded_lookup", guarded_lookup);
    suite.case("user.server_many_clients", server_many_clients);
    suite.case("user.round_robin", round_robin);
    suite.case("user.delete_running_thread", delete_running_thread);
    suite.case("user.fpu_across_preemption", fpu_across_preemption);
    suite.case("user.syscall_at_top_of_user_space", syscall_at_top_of_user_space);
}

/// The last page of the lower half.
const TOP_PAGE: u64 = 0x7fff_ffff_f000;
/// Where the code on it starts: `mov eax, imm32` (5 bytes) then `syscall`
/// in the page's last two bytes.
const TOP_CODE: u64 = TOP_PAGE + 0xff9;

extern "C" fn jump_to_top() -> ! {
    // SAFETY: jumps to the code the case placed at the top of user space.
    unsafe { core::arch::asm!("jmp {target}", target = in(reg) TOP_CODE, options(noreturn)) }
}

/// A `syscall` in the last two bytes of the lower half would return to
/// 0x8000_0000_0000, which is not canonical: `iretq` (or `sysretq`) would
/// fault in ring 0. The kernel must return the thread to 0 instead, where
/// it takes a page fault of its own. Tried with a `Yield` (the entry
/// stub's shortcut when nothing else could run) and with a call the
/// general path handles.
fn syscall_at_top_of_user_space() -> Outcome {
    let frame = make(ObjectType::Frame4K, 0)?;
    strata_rt::root::tables_for(slot::VSPACE, TOP_PAGE).map_err(|e| detail!("tables: {e}"))?;
    let rw = (Rights::READ | Rights::WRITE).bits();
    let executable = strata_abi::object::VmAttributes::EXECUTABLE.bits();
    for number in
        [strata_abi::syscall::Syscall::Yield as u64, strata_abi::syscall::Syscall::DebugCounters as u64]
    {
        check("map writable", call(frame, Label::FrameMap, &[TOP_PAGE, rw, 0], &[slot::VSPACE]))?;
        let [a, b, c, d] = (number as u32).to_le_bytes();
        for (i, byte) in [0xb8, a, b, c, d, 0x0f, 0x05].into_iter().enumerate() {
            // SAFETY: the page was just mapped read-write here.
            unsafe { ((TOP_CODE + i as u64) as *mut u8).write_volatile(byte) };
        }
        // Remapped read-execute (never writable and executable at once).
        check(
            "map executable",
            call(frame, Label::FrameMap, &[TOP_PAGE, Rights::READ.bits(), executable], &[slot::VSPACE]),
        )?;
        let (label, [vector, _, rip, address]) = fault_of(jump_to_top)?;
        if label != 1 || vector != 14 || rip != 0 || address != 0 {
            return Err(detail!(
                "system call {number}: fault label {label} vector {vector} rip {rip:#x} address {address:#x}"
            ));
        }
    }
    Ok(detail!("returned_to=0 then #PF for Yield and DebugCounters"))
}

/// Runs `entry` in a thread whose faults come to a fresh endpoint, takes
/// the fault message, deletes the thread and returns (label, words).
fn fault_of(entry: extern "C" fn() -> !) -> Result<(u64, [u64; 4]), Detail> {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    let thread = spawn_in(entry, slot::VSPACE, endpoint)?;
    let fault = recv(endpoint);
    check("delete the faulting thread", cnode_op(Label::CNodeDelete, &[thread, DEPTH]))?;
    Ok((fault.label, [fault.words[0], fault.words[1], fault.words[2], fault.words[3]]))
}

fn exception(entry: extern "C" fn() -> !, vector: u64, error_code: u64, name: &str) -> Outcome {
    let (label, [got_vector, got_code, rip, _]) = fault_of(entry)?;
    let start = entry as usize as u64;
    if label != 1 || got_vector != vector || got_code != error_code || !(start..start + 64).contains(&rip) {
        return Err(detail!("{name}: label {label} vector {got_vector} error {got_code:#x} rip {rip:#x}"));
    }
    Ok(detail!("{name} vector={vector} error_code={error_code:#x} rip={rip:#x}"))
}

extern "C" fn divide_by_zero() -> ! {
    // SAFETY: divides by zero on purpose: #DE must reach the fault handler.
    unsafe { core::arch::asm!("xor ecx, ecx", "div ecx", options(noreturn)) }
}

extern "C" fn breakpoint() -> ! {
    // SAFETY: a breakpoint on purpose: #BP must reach the fault handler.
    unsafe { core::arch::asm!("int3", "ud2", options(noreturn)) }
}

extern "C" fn privileged() -> ! {
    // SAFETY: HLT in ring 3 raises #GP(0) on purpose.
    unsafe { core::arch::asm!("hlt", "ud2", options(noreturn)) }
}

extern "C" fn int_gate() -> ! {
    // SAFETY: INT 0x30 (the kernel's timer vector) from ring 3 must raise
    // #GP with the IDT bit set, never reach the timer handler.
    unsafe { core::arch::asm!("int 0x30", "ud2", options(noreturn)) }
}

/// #DE (vector 0), as a fault message.
fn exception_divide() -> Outcome {
    exception(divide_by_zero, 0, 0, "#DE")
}

/// #BP (vector 3): INT3 is open to user code.
fn exception_breakpoint() -> Outcome {
    exception(breakpoint, 3, 0, "#BP")
}

/// #GP(0) (vector 13) for a privileged instruction.
fn exception_privileged() -> Outcome {
    exception(privileged, 13, 0, "#GP")
}

/// `INT 0x30` from ring 3: #GP whose error code names the IDT entry (bit
/// 1 set). The SDM (vol. 3A §6.13) gives vector × 8 + 2, which Bochs
/// reports; QEMU TCG reports the 16-byte entry's offset, vector × 16 + 2.
fn int_gate_refused() -> Outcome {
    let (label, [vector, error_code, ..]) = fault_of(int_gate)?;
    let names_the_gate = error_code == 0x30 * 8 + 2 || error_code == 0x30 * 16 + 2;
    if label != 1 || vector != 13 || !names_the_gate {
        return Err(detail!("label {label} vector {vector} error code {error_code:#x}"));
    }
    Ok(detail!("#GP error_code={error_code:#x}"))
}

extern "C" fn call_read_only() -> ! {
    let endpoint = TARGET.load(Ordering::SeqCst);
    ipc_call(endpoint, 5, &[1]);
    loop {
        yield_now();
    }
}

/// A Call through an endpoint capability without WRITE is a system-call
/// fault (label 2, words: number, capability pointer, RIP).
fn ipc_without_right_faults() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    let read_only = fresh_slot();
    check("mint", cnode_op(Label::CNodeMint, &[read_only, DEPTH, endpoint, DEPTH, Rights::READ.bits(), 0]))?;
    TARGET.store(read_only, Ordering::SeqCst);
    let (label, [number, cptr, ..]) = fault_of(call_read_only)?;
    if label != 2 || number != strata_abi::syscall::Syscall::Call as u64 || cptr != read_only {
        return Err(detail!("fault label {label} number {number} cptr {cptr}"));
    }
    Ok(detail!("label=2 syscall=Call cptr={cptr}"))
}

extern "C" fn waits_on_target() -> ! {
    recv(TARGET.load(Ordering::SeqCst));
    loop {
        yield_now();
    }
}

/// Deleting an endpoint a thread is waiting on restarts the thread's
/// system call, which now finds no capability: a system-call fault.
fn deleted_endpoint_restarts_waiter() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    TARGET.store(endpoint, Ordering::SeqCst);
    let handler = make(ObjectType::Endpoint, 0)?;
    let thread = spawn_in(waits_on_target, slot::VSPACE, handler)?;
    yield_now(); // the thread blocks on the endpoint
    check("delete the endpoint", cnode_op(Label::CNodeDelete, &[endpoint, DEPTH]))?;
    let fault = recv(handler);
    check("delete the thread", cnode_op(Label::CNodeDelete, &[thread, DEPTH]))?;
    let [number, cptr, ..] = fault.words;
    if fault.label != 2 || number != strata_abi::syscall::Syscall::Recv as u64 || cptr != endpoint {
        return Err(detail!("fault label {} words {:?}", fault.label, fault.words));
    }
    Ok(detail!("restarted Recv faulted on the empty slot {cptr}"))
}

extern "C" fn reads_unmap_page() -> ! {
    loop {
        // SAFETY: the page is mapped while the root says so; afterwards the
        // read faults, which is what the case checks.
        let value = unsafe { (UNMAP_PAGE as *const u64).read_volatile() };
        SPIN_COUNT.store(value, Ordering::SeqCst);
        yield_now();
    }
}

/// A thread reads a page; after the root unmaps it, the thread's next
/// read faults at that address (the kernel flushed the translation).
fn unmap_seen_by_thread() -> Outcome {
    let frame = make(ObjectType::Frame4K, 0)?;
    let rw = (Rights::READ | Rights::WRITE).bits();
    check("map", call(frame, Label::FrameMap, &[UNMAP_PAGE, rw, 0], &[slot::VSPACE]))?;
    // SAFETY: just mapped read-write.
    unsafe { (UNMAP_PAGE as *mut u64).write_volatile(0x600d) };
    SPIN_COUNT.store(0, Ordering::SeqCst);
    let handler = make(ObjectType::Endpoint, 0)?;
    let thread = spawn_in(reads_unmap_page, slot::VSPACE, handler)?;
    // The thread reads the page (its TLB now holds it).
    yield_until(|| SPIN_COUNT.load(Ordering::SeqCst) != 0);
    let before = SPIN_COUNT.load(Ordering::SeqCst);
    check("unmap", call(frame, Label::FrameUnmap, &[], &[]))?;
    let fault = recv(handler);
    check("delete the thread", cnode_op(Label::CNodeDelete, &[thread, DEPTH]))?;
    let [vector, error_code, _, address, ..] = fault.words;
    if before != 0x600d || fault.label != 1 || vector != 14 || address != UNMAP_PAGE || error_code & 1 != 0 {
        return Err(detail!("read {before:#x}; fault label {} words {:x?}", fault.label, fault.words));
    }
    Ok(detail!("read 0x600d, then #PF (not present) at {address:#x}"))
}

/// A mapped frame capability can be remapped at the same address to
/// change its rights, but not moved elsewhere.
fn frame_remap_rights() -> Outcome {
    let frame = make(ObjectType::Frame4K, 0)?;
    let (r, rw) = (Rights::READ.bits(), (Rights::READ | Rights::WRITE).bits());
    check("map read-only", call(frame, Label::FrameMap, &[REMAP_PAGE, r, 0], &[slot::VSPACE]))?;
    check("remap read-write", call(frame, Label::FrameMap, &[REMAP_PAGE, rw, 0], &[slot::VSPACE]))?;
    // SAFETY: now mapped read-write.
    let value = unsafe {
        (REMAP_PAGE as *mut u64).write_volatile(0x1234_5678);
        (REMAP_PAGE as *const u64).read_volatile()
    };
    expect_error(
        "remap elsewhere",
        call(frame, Label::FrameMap, &[REMAP_PAGE + 0x1000, rw, 0], &[slot::VSPACE]),
        InvocationError::InvalidArgument { index: 0 },
    )?;
    check("unmap", call(frame, Label::FrameUnmap, &[], &[]))?;
    check("unmap again is harmless", call(frame, Label::FrameUnmap, &[], &[]))?;
    if value != 0x1234_5678 {
        return Err(detail!("read back {value:#x}"));
    }
    Ok(detail!("R then RW at the same address; elsewhere refused"))
}

/// ASID refusals: assigning twice, copying an unassigned PML4, mapping
/// into an address space without an ASID, a pool from the wrong Untyped.
fn asid_errors() -> Outcome {
    let pml4 = make(ObjectType::Pml4, 0)?;
    expect_error(
        "copy without an ASID",
        cnode_op(Label::CNodeCopy, &[fresh_slot(), DEPTH, pml4, DEPTH, 15]),
        InvocationError::IllegalOperation,
    )?;
    let table = make(ObjectType::Pdpt, 0)?;
    expect_error(
        "map into a PML4 without an ASID",
        call(table, Label::PageTableMap, &[0], &[pml4]),
        InvocationError::InvalidCapability { index: 1 },
    )?;
    check("assign", call(slot::ASID_POOL, Label::AsidPoolAssign, &[], &[pml4]))?;
    expect_error(
        "assign twice",
        call(slot::ASID_POOL, Label::AsidPoolAssign, &[], &[pml4]),
        InvocationError::InvalidCapability { index: 1 },
    )?;
    let big = make(ObjectType::Untyped, 13)?;
    expect_error(
        "pool from 8 KiB",
        call(slot::ASID_CONTROL, Label::AsidControlMakePool, &[fresh_slot(), DEPTH], &[big, slot::CNODE]),
        InvocationError::InvalidCapability { index: 1 },
    )?;
    check("map after assign", call(table, Label::PageTableMap, &[0], &[pml4]))?;
    Ok(detail!("copy map assign pool"))
}

/// A CNode capability given a 4-bit guard: slots resolve only through
/// that guard, and a wrong guard or depth names where the walk broke (as
/// in seL4, a guard mismatch reports the CNode's guard).
fn guarded_lookup() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    let cnode = make(ObjectType::CNode, 4)?;
    let guarded = fresh_slot();
    let data = 4 | (0b1010 << 6); // guard size 4, guard 0b1010
    check("mutate", cnode_op(Label::CNodeMutate, &[guarded, DEPTH, cnode, DEPTH, data]))?;
    let copy_into = |index: u64, depth: u64| {
        call(guarded, Label::CNodeCopy, &[index, depth, endpoint, DEPTH, 15], &[slot::CNODE])
    };
    check("through the guard", copy_into(0b1010_0011, 8))?;
    expect_error(
        "wrong guard",
        copy_into(0b1011_0011, 8),
        InvocationError::FailedLookup {
            source: false,
            failure: LookupFailure::GuardMismatch { bits_left: 8, guard_found: 0b1010, guard_size: 4 },
        },
    )?;
    expect_error(
        "too shallow",
        copy_into(0b10_1000, 6),
        InvocationError::FailedLookup {
            source: false,
            failure: LookupFailure::DepthMismatch { bits_left: 6, bits_found: 8 },
        },
    )?;
    expect_error("occupied", copy_into(0b1010_0011, 8), InvocationError::DeleteFirst)?;
    // The copy is really there: moving it out through the guard works.
    let out = fresh_slot();
    check("move out", call(slot::CNODE, Label::CNodeMove, &[out, DEPTH, 0b1010_0011, 8], &[guarded]))?;
    Ok(detail!("guard 0b1010/4 resolves; mismatches reported"))
}

extern "C" fn client() -> ! {
    let n = NEXT_CLIENT.fetch_add(1, Ordering::SeqCst) as usize;
    let endpoint = CLIENT_ENDPOINTS[n % 3].load(Ordering::SeqCst);
    let mut n = 0;
    loop {
        n += 1;
        let reply = ipc_call(endpoint, 9, &[n]);
        ROUND_LOG.fetch_add(reply.words[0], Ordering::SeqCst);
    }
}

/// The root serves three badged clients with Recv then ReplyRecv: each
/// request carries its client's badge, and each reply reaches its caller.
fn server_many_clients() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    NEXT_CLIENT.store(0, Ordering::SeqCst);
    for (n, slot) in CLIENT_ENDPOINTS.iter().enumerate() {
        slot.store(badged(endpoint, 1 << n)?, Ordering::SeqCst);
    }
    let mut threads = [0; 3];
    for thread in threads.iter_mut() {
        *thread = spawn(client)?;
    }
    ROUND_LOG.store(0, Ordering::SeqCst);
    let mut seen = 0u64;
    let mut message = recv(endpoint);
    for _ in 0..8 {
        seen |= message.badge;
        if message.label != 9 {
            return Err(detail!("request label {}", message.label));
        }
        message = reply_recv(endpoint, 0, &[message.badge]);
    }
    for thread in threads {
        check("suspend", call(thread, Label::TcbSuspend, &[], &[]))?;
    }
    let replies = ROUND_LOG.load(Ordering::SeqCst);
    if seen != 0b111 || replies == 0 {
        return Err(detail!("badges seen {seen:#b}, reply sum {replies}"));
    }
    Ok(detail!("badges=0b111 reply_sum={replies}"))
}

extern "C" fn round_robin_worker() -> ! {
    // Ids in the order the threads first run.
    let id = TARGET.fetch_add(1, Ordering::SeqCst) + 1;
    loop {
        let _ = ROUND_LOG.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |log| Some(log << 4 | id));
        yield_now();
    }
}

/// Three threads at one priority that each yield run in turn.
fn round_robin() -> Outcome {
    TARGET.store(0, Ordering::SeqCst);
    let mut threads = [0; 3];
    for thread in threads.iter_mut() {
        // At 200 it cannot run before the root (255) lowers itself.
        *thread = spawn_at(round_robin_worker, slot::VSPACE, 0, 200)?;
    }
    // Lower the root to 200 and yield until six turns are logged. A timer
    // tick between a worker's log and its yield sends it to the back of the
    // queue with its yield still to make, so its next turn logs nothing:
    // the order is then right but shows a gap. A scheduler that is not
    // round robin never logs six turns in cyclic order, so the run is
    // repeated (at most 5 times) until one shows no gap.
    let mut logs = [0u64; 5];
    let mut cyclic = false;
    for log in &mut logs {
        ROUND_LOG.store(0, Ordering::SeqCst);
        check("lower", call(slot::TCB, Label::TcbSetPriority, &[200, 255], &[slot::TCB]))?;
        yield_until(|| ROUND_LOG.load(Ordering::SeqCst) >= 0x10_0000);
        *log = ROUND_LOG.load(Ordering::SeqCst);
        check("raise", call(slot::TCB, Label::TcbSetPriority, &[255, 255], &[slot::TCB]))?;
        let turns: [u64; 6] = core::array::from_fn(|n| (*log >> (4 * (5 - n))) & 0xf);
        cyclic = turns.windows(2).all(|pair| pair[1] == pair[0] % 3 + 1);
        if cyclic {
            break;
        }
    }
    for thread in threads {
        check("suspend", call(thread, Label::TcbSuspend, &[], &[]))?;
    }
    let runs = logs.iter().take_while(|&&log| log != 0).count();
    if !cyclic {
        return Err(detail!("run orders {:x?}: not round robin over threads 1, 2, 3", &logs[..runs]));
    }
    Ok(detail!("six turns in order 1, 2, 3 ({runs} run(s): {:x?})", &logs[..runs]))
}

extern "C" fn counting_spinner() -> ! {
    loop {
        SPIN_COUNT.fetch_add(1, Ordering::SeqCst);
        yield_now();
    }
}

/// Deleting the last capability to a runnable thread stops it for good.
fn delete_running_thread() -> Outcome {
    SPIN_COUNT.store(0, Ordering::SeqCst);
    let thread = spawn(counting_spinner)?;
    yield_until(|| SPIN_COUNT.load(Ordering::SeqCst) != 0);
    let running = SPIN_COUNT.load(Ordering::SeqCst);
    check("delete", cnode_op(Label::CNodeDelete, &[thread, DEPTH]))?;
    let at_delete = SPIN_COUNT.load(Ordering::SeqCst);
    for _ in 0..5 {
        yield_now();
    }
    let later = SPIN_COUNT.load(Ordering::SeqCst);
    if running == 0 || later != at_delete {
        return Err(detail!("counts: running {running}, at delete {at_delete}, later {later}"));
    }
    Ok(detail!("ran {running} times, none after delete"))
}

extern "C" fn sse_spinner() -> ! {
    let counter = SPIN_COUNT.as_ptr();
    // SAFETY: sets ymm6 (AVX is usable: the test checked) and bumps a
    // counter forever; the counter is a static.
    unsafe {
        core::arch::asm!(
            "2:",
            "vmovq xmm7, {c}",
            "vmovq xmm6, {b}",
            "vinsertf128 ymm6, ymm6, xmm7, 1",
            "lock inc qword ptr [{counter}]",
            "jmp 2b",
            b = in(reg) YMM_THEIRS[0],
            c = in(reg) YMM_THEIRS[1],
            counter = in(reg) counter,
            options(noreturn),
        )
    }
}

/// ymm6 (SSE and AVX state) survives timer preemption: the root spins
/// with ymm6 set until a thread that sets its own ymm6 has run (only the
/// timer can switch).
fn fpu_across_preemption() -> Outcome {
    avx_usable()?;
    SPIN_COUNT.store(0, Ordering::SeqCst);
    let thread = spawn(sse_spinner)?;
    let counter = SPIN_COUNT.as_ptr();
    let (low, high): (u64, u64);
    // SAFETY: sets ymm6 (AVX is usable), spins reading a static until it
    // changes, and reads ymm6 back; all registers used are declared.
    unsafe {
        core::arch::asm!(
            "vmovq xmm7, {high}",
            "vmovq xmm6, {low}",
            "vinsertf128 ymm6, ymm6, xmm7, 1",
            "2:",
            "pause",
            "cmp qword ptr [{counter}], 0",
            "je 2b",
            "vmovq {low}, xmm6",
            "vextractf128 xmm7, ymm6, 1",
            "vmovq {high}, xmm7",
            "vzeroupper",
            low = inout(reg) YMM_MINE[0] => low,
            high = inout(reg) YMM_MINE[1] => high,
            counter = in(reg) counter,
            out("xmm6") _, out("xmm7") _,
        );
    }
    check("suspend", call(thread, Label::TcbSuspend, &[], &[]))?;
    if [low, high] != YMM_MINE {
        return Err(detail!("ymm6 is {:x?} after preemption", [low, high]));
    }
    Ok(detail!("ymm6 (low and upper lane) preserved across preemption"))
}
