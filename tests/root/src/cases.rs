//! The cases.

// Case results are formatted and printed at once; their size never matters.
#![allow(clippy::result_large_err)]

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use strata_abi::bootinfo::{self, slot};
use strata_abi::error::{InvocationError, LookupFailure};
use strata_abi::exit::ExitCode;
use strata_abi::invocation::Label;
use strata_abi::message::MessageInfo;
use strata_abi::object::{ObjectType, Rights};
use strata_abi::syscall::Syscall;
use strata_rt::root::ThreadSpec;
use strata_rt::{CPtr, call, debug, ipc_call, poll, println, recv, reply, reply_recv, signal, yield_now};

strata_rt::entry!(main);

/// Depth at which root-CNode slot numbers resolve (its guard takes the rest).
const DEPTH: u64 = 64;
/// Where the frame case maps its page (the image's page directory covers it).
const SCRATCH_PAGE: u64 = 0x60_0000;
/// Other threads' stack pages, after it.
const WORKER_STACK: u64 = 0x60_1000;
/// The page the pager case leaves unmapped until a thread faults on it.
const PAGER_ADDRESS: u64 = 0x70_0000;

static FLAG: AtomicU64 = AtomicU64::new(0);
static COUNTER: AtomicU64 = AtomicU64::new(0);
static SERVER_ENDPOINT: AtomicU64 = AtomicU64::new(0);
static WAIT_NOTIFICATION: AtomicU64 = AtomicU64::new(0);
static WOKEN_WITH: AtomicU64 = AtomicU64::new(0);
static PAGED_VALUE: AtomicU64 = AtomicU64::new(0);
static SIGNAL_A: AtomicU64 = AtomicU64::new(0);
static SHARED_PAGE: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    /// Start of the writable part of this program's image (`user.ld`).
    static __data_start: u8;
}

/// A free root-CNode slot, from the same allocator the SDK's toolkit uses.
fn fresh_slot() -> CPtr {
    strata_rt::root::fresh_slot()
}

struct Detail {
    text: [u8; 160],
    len: usize,
}

impl Write for Detail {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.text.len() - self.len);
        self.text[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

macro_rules! detail {
    ($($arg:tt)*) => {{
        let mut d = Detail { text: [0; 160], len: 0 };
        let _ = write!(d, $($arg)*);
        d
    }};
}

type Outcome = Result<Detail, Detail>;

struct Suite {
    passed: u32,
    failed: u32,
}

impl Suite {
    fn case(&mut self, name: &str, test: fn() -> Outcome) {
        let (verb, detail) = match test() {
            Ok(d) => {
                self.passed += 1;
                ("pass", d)
            }
            Err(d) => {
                self.failed += 1;
                ("fail", d)
            }
        };
        let text = core::str::from_utf8(&detail.text[..detail.len]).unwrap_or("");
        println!("KTEST {verb} {name} {text}");
    }
}

fn main() -> ! {
    println!("KTEST suite user");
    let mut suite = Suite { passed: 0, failed: 0 };
    suite.case("user.boot_info", boot_info);
    suite.case("user.retype", retype);
    suite.case("user.cnode", cnode);
    suite.case("user.lookup_errors", lookup_errors);
    suite.case("user.frame_map", frame_map);
    suite.case("user.thread_switch", thread_switch);
    suite.case("user.preemption", preemption);
    suite.case("user.fault_suspends", fault_suspends);
    suite.case("user.ipc_same_space", ipc_same_space);
    suite.case("user.ipc_cross_space", ipc_cross_space);
    suite.case("user.ipc_fastpath", ipc_fastpath);
    suite.case("user.ipc_fastpath_lengths", ipc_fastpath_lengths);
    suite.case("user.ipc_fastpath_priorities", ipc_fastpath_priorities);
    suite.case("user.ipc_overlapping_buffers", ipc_overlapping_buffers);
    suite.case("user.thread_without_vspace_faults", thread_without_vspace_faults);
    suite.case("user.notification", notification);
    suite.case("user.fault_handler", fault_handler);
    suite.case("user.io_ports", io_ports);
    suite.case("user.irq_notification", irq_notification);
    more::run(&mut suite);
    faults::run(&mut suite);
    vm::run(&mut suite);
    // Last: whatever the fuzzer leaves behind cannot disturb another case.
    suite.case("user.syscall_fuzz", fuzz::syscall_fuzz);
    println!("KTEST done passed={} failed={}", suite.passed, suite.failed);
    debug::shutdown(if suite.failed == 0 { ExitCode::Success } else { ExitCode::KernelFailure })
}

/// Most yields a case waits through for another thread to get somewhere.
const MAX_YIELDS: u32 = 1000;

/// Yields until `done` holds (another thread at the same priority has got
/// somewhere), at most `MAX_YIELDS` times. The timer can preempt that
/// thread at any instruction, so one yield is never enough to rely on.
fn yield_until(done: impl Fn() -> bool) -> bool {
    for _ in 0..MAX_YIELDS {
        if done() {
            return true;
        }
        yield_now();
    }
    done()
}

fn check(what: &str, result: Result<[u64; 4], InvocationError>) -> Result<[u64; 4], Detail> {
    result.map_err(|e| detail!("{what}: {e}"))
}

fn expect_error(
    what: &str,
    result: Result<[u64; 4], InvocationError>,
    expected: InvocationError,
) -> Result<(), Detail> {
    match result {
        Err(e) if e == expected => Ok(()),
        other => Err(detail!("{what}: expected {expected:?}, got {other:?}")),
    }
}

/// Retypes one object from the first Untyped into a fresh slot.
fn make(kind: ObjectType, size: u64) -> Result<CPtr, Detail> {
    strata_rt::root::retype(kind, size).map_err(|e| detail!("retype {kind:?}: {e}"))
}

fn cnode_op(label: Label, words: &[u64]) -> Result<[u64; 4], InvocationError> {
    call(slot::CNODE, label, words, &[slot::CNODE])
}

fn boot_info() -> Outcome {
    let info = strata_rt::boot_info();
    if info.magic != bootinfo::MAGIC || info.version != bootinfo::VERSION {
        return Err(detail!("bad magic or version"));
    }
    if info.untyped_count == 0 || info.image_frames.start >= info.image_frames.end {
        return Err(detail!("no Untypeds or no image frames"));
    }
    let total: u64 = info.untypeds[..info.untyped_count as usize].iter().map(|u| 1u64 << u.size_bits).sum();
    Ok(detail!(
        "untypeds={} untyped_kib={} image_frames={}",
        info.untyped_count,
        total / 1024,
        info.image_frames.end - info.image_frames.start
    ))
}

fn retype() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    make(ObjectType::Notification, 0)?;
    make(ObjectType::CNode, 4)?;
    // Into an occupied slot: refused, with the error decoded.
    let untyped = strata_rt::boot_info().untyped_slots.start;
    let again = call(
        untyped,
        Label::UntypedRetype,
        &[ObjectType::Endpoint as u64, 0, slot::CNODE, DEPTH, endpoint, 1],
        &[slot::CNODE],
    );
    expect_error("retype into an occupied slot", again, InvocationError::DeleteFirst)?;
    let bad_size = call(
        untyped,
        Label::UntypedRetype,
        &[ObjectType::CNode as u64, 30, slot::CNODE, DEPTH, fresh_slot(), 1],
        &[slot::CNODE],
    );
    expect_error("oversized CNode", bad_size, InvocationError::RangeError { min: 1, max: 24 })?;
    Ok(detail!("endpoint_slot={endpoint}"))
}

fn cnode() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    let (copy, minted, moved) = (fresh_slot(), fresh_slot(), fresh_slot());
    check("copy", cnode_op(Label::CNodeCopy, &[copy, DEPTH, endpoint, DEPTH, Rights::WRITE.bits()]))?;
    check("mint", cnode_op(Label::CNodeMint, &[minted, DEPTH, endpoint, DEPTH, Rights::all().bits(), 42]))?;
    expect_error(
        "re-badging",
        cnode_op(Label::CNodeMint, &[fresh_slot(), DEPTH, minted, DEPTH, Rights::all().bits(), 7]),
        InvocationError::IllegalOperation,
    )?;
    check("move", cnode_op(Label::CNodeMove, &[moved, DEPTH, minted, DEPTH]))?;
    // The moved-from slot is empty now: copying from it fails.
    expect_error(
        "copy from a moved-away slot",
        cnode_op(Label::CNodeCopy, &[fresh_slot(), DEPTH, minted, DEPTH, 15]),
        InvocationError::FailedLookup {
            source: true,
            failure: LookupFailure::MissingCapability { bits_left: 0 },
        },
    )?;
    // Revoking the original removes the copy and the badged capability.
    check("revoke", cnode_op(Label::CNodeRevoke, &[endpoint, DEPTH]))?;
    for gone in [copy, moved] {
        expect_error(
            "derived capability after revoke",
            cnode_op(Label::CNodeCopy, &[fresh_slot(), DEPTH, gone, DEPTH, 15]),
            InvocationError::FailedLookup {
                source: true,
                failure: LookupFailure::MissingCapability { bits_left: 0 },
            },
        )?;
    }
    check("delete", cnode_op(Label::CNodeDelete, &[endpoint, DEPTH]))?;
    Ok(detail!("copy mint move revoke delete"))
}

fn lookup_errors() -> Outcome {
    expect_error(
        "depth 0",
        cnode_op(Label::CNodeDelete, &[5, 0]),
        InvocationError::RangeError { min: 1, max: 64 },
    )?;
    expect_error(
        "call on an empty slot",
        call(4000, Label::CNodeDelete, &[1, DEPTH], &[]),
        InvocationError::FailedLookup {
            source: true,
            failure: LookupFailure::MissingCapability { bits_left: 0 },
        },
    )?;
    expect_error(
        "wrong object",
        call(slot::VSPACE, Label::CNodeDelete, &[1, DEPTH], &[]),
        InvocationError::IllegalOperation,
    )?;
    expect_error(
        "truncated",
        cnode_op(Label::CNodeCopy, &[fresh_slot(), DEPTH]),
        InvocationError::TruncatedMessage { needed: 5 },
    )?;
    Ok(detail!("range lookup type truncation"))
}

fn frame_map() -> Outcome {
    let table = make(ObjectType::PageTable, 0)?;
    let frame = make(ObjectType::Frame4K, 0)?;
    check("map page table", call(table, Label::PageTableMap, &[SCRATCH_PAGE], &[slot::VSPACE]))?;
    let rw = (Rights::READ | Rights::WRITE).bits();
    check("map frame", call(frame, Label::FrameMap, &[SCRATCH_PAGE, rw, 0], &[slot::VSPACE]))?;
    let page = SCRATCH_PAGE as *mut u64;
    for i in 0..512 {
        // SAFETY: the frame was just mapped read-write at SCRATCH_PAGE.
        unsafe { page.add(i).write_volatile(i as u64 * 0x0101_0101) };
    }
    for i in 0..512 {
        // SAFETY: as above.
        let value = unsafe { page.add(i).read_volatile() };
        if value != i as u64 * 0x0101_0101 {
            return Err(detail!("word {i} reads {value:#x}"));
        }
    }
    let [physical, ..] = check("get address", call(frame, Label::FrameGetAddress, &[], &[]))?;
    let info = strata_rt::boot_info();
    let inside = info.untypeds[..info.untyped_count as usize]
        .iter()
        .any(|u| (u.physical_address..u.physical_address + (1 << u.size_bits)).contains(&physical));
    if !inside {
        return Err(detail!("frame at {physical:#x} is in no Untyped"));
    }
    expect_error(
        "double map",
        call(frame, Label::FrameMap, &[SCRATCH_PAGE + 0x1000, rw, 0], &[slot::VSPACE]),
        InvocationError::InvalidArgument { index: 0 },
    )?;
    Ok(detail!("physical={physical:#x}"))
}

/// A second thread in this address space at `entry`, priority 255.
fn spawn(entry: extern "C" fn() -> !) -> Result<CPtr, Detail> {
    spawn_in(entry, slot::VSPACE, 0)
}

/// A thread at `entry` in the address space `vspace`, priority 255, with
/// its own stack page (mapped there at the next free `WORKER_STACK` page)
/// and the fault endpoint `fault_endpoint` (0: none).
fn spawn_in(entry: extern "C" fn() -> !, vspace: CPtr, fault_endpoint: CPtr) -> Result<CPtr, Detail> {
    spawn_at(entry, vspace, fault_endpoint, 255)
}

/// As [`spawn_in`], at `priority` (which is also its maximum controlled priority).
fn spawn_at(
    entry: extern "C" fn() -> !,
    vspace: CPtr,
    fault_endpoint: CPtr,
    priority: u64,
) -> Result<CPtr, Detail> {
    let stack_page = next_stack_page();
    spawn_thread(ThreadSpec { entry, vspace, stack_page, ipc_buffer: 0, fault_endpoint, priority })
}

/// The next free page for a thread's stack, upwards from `WORKER_STACK`.
fn next_stack_page() -> u64 {
    static STACKS: AtomicU64 = AtomicU64::new(0);
    WORKER_STACK + 0x1000 * STACKS.fetch_add(1, Ordering::Relaxed)
}

/// Starts a thread through the SDK's toolkit.
fn spawn_thread(spec: ThreadSpec) -> Result<CPtr, Detail> {
    strata_rt::root::spawn(spec).map_err(|e| detail!("spawn: {e}"))
}

/// Whether user threads can use AVX: the CPU has it (CPUID.01H:ECX bit
/// 28), the kernel turned on XSAVE (OSXSAVE, bit 27), and XCR0 enables SSE
/// and AVX state (Intel SDM vol. 1 §14.3). The kernel must, on every CPU
/// the tests run on, or it could not keep AVX state across switches.
fn avx_usable() -> Result<(), Detail> {
    let ecx = core::arch::x86_64::__cpuid(1).ecx;
    if ecx & (1 << 28) == 0 {
        return Err(detail!(
            "the CPU has no AVX (CPUID.01H:ECX bit 28): run under QEMU -cpu max or Bochs Skylake-X"
        ));
    }
    if ecx & (1 << 27) == 0 {
        return Err(detail!("CPUID.01H:ECX.OSXSAVE is clear: the kernel did not set CR4.OSXSAVE"));
    }
    // SAFETY: XGETBV with ECX = 0 reads XCR0; CR4.OSXSAVE is set (above).
    let xcr0 = unsafe { core::arch::x86_64::_xgetbv(0) };
    if xcr0 & 0b110 != 0b110 {
        return Err(detail!("XCR0 is {xcr0:#x}: the kernel did not enable SSE and AVX state"));
    }
    Ok(())
}

/// Makes system call `number` (RDI = `rdi`, message info 0) with ymm6 set
/// to `ymm6[0]` in its low quadword and `ymm6[1]` in its upper lane's low
/// quadword going in, and returns those two quadwords as they come back:
/// the kernel must have kept this thread's SSE and AVX state whatever ran
/// in between. Needs [`avx_usable`].
fn syscall_keeping_ymm6(number: strata_abi::syscall::Syscall, rdi: u64, ymm6: [u64; 2]) -> [u64; 2] {
    use core::arch::x86_64::{__m128i, _mm_cvtsi64_si128, _mm_cvtsi128_si64};
    let (low, high): (__m128i, __m128i);
    // SAFETY: sets ymm6 from xmm6 and xmm7, makes the system call and reads
    // ymm6 back into them, declaring every register the kernel may change
    // on return (AVX is usable: callers check `avx_usable` first).
    // (The SSE2 conversions need `unsafe` only for their target feature,
    // which every x86-64 CPU has.)
    unsafe {
        core::arch::asm!(
            "vinsertf128 ymm6, ymm6, xmm7, 1",
            "syscall",
            "vextractf128 xmm7, ymm6, 1",
            "vzeroupper",
            inout("xmm6") _mm_cvtsi64_si128(ymm6[0] as i64) => low,
            inout("xmm7") _mm_cvtsi64_si128(ymm6[1] as i64) => high,
            inlateout("rax") number as u64 => _,
            inlateout("rdi") rdi => _,
            inlateout("rsi") 0u64 => _,
            out("rdx") _, out("r8") _, out("r9") _, out("r10") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _,
            lateout("rcx") _, lateout("r11") _,
        );
        [_mm_cvtsi128_si64(low) as u64, _mm_cvtsi128_si64(high) as u64]
    }
}

/// What the root puts in ymm6, and what other threads put there.
const YMM_MINE: [u64; 2] = [0xaaaa_aaaa_aaaa_aaaa, 0xa5a5_a5a5_a5a5_a5a5];
const YMM_THEIRS: [u64; 2] = [0xbbbb_bbbb_bbbb_bbbb, 0x5b5b_5b5b_5b5b_5b5b];

extern "C" fn yielding_worker() -> ! {
    FLAG.store(1, Ordering::SeqCst);
    loop {
        // Another pattern in ymm6 at every switch.
        syscall_keeping_ymm6(strata_abi::syscall::Syscall::Yield, 0, YMM_THEIRS);
    }
}

fn thread_switch() -> Outcome {
    avx_usable()?;
    let worker = spawn(yielding_worker)?;
    let mut seen = YMM_MINE;
    let mut yields = 0;
    // The timer may preempt the worker before it sets the flag, so yield
    // until it has (round robin runs it on every yield).
    while FLAG.load(Ordering::SeqCst) != 1 && yields < MAX_YIELDS && seen == YMM_MINE {
        yields += 1;
        seen = syscall_keeping_ymm6(strata_abi::syscall::Syscall::Yield, 0, YMM_MINE);
    }
    check("suspend worker", call(worker, Label::TcbSuspend, &[], &[]))?;
    if FLAG.load(Ordering::SeqCst) != 1 {
        return Err(detail!("the worker did not run in {yields} yields"));
    }
    if seen != YMM_MINE {
        return Err(detail!("ymm6 is {seen:x?} after a switch: another thread's SSE or AVX state leaked in"));
    }
    Ok(detail!("worker_ran=1 ymm6_preserved=1"))
}

extern "C" fn spinning_worker() -> ! {
    loop {
        COUNTER.fetch_add(1, Ordering::SeqCst);
    }
}

fn preemption() -> Outcome {
    let worker = spawn(spinning_worker)?;
    // Spin without yielding: only the timer can let the worker run.
    let mut spins = 0u64;
    while COUNTER.load(Ordering::SeqCst) == 0 {
        spins += 1;
        if spins > 2_000_000_000 {
            return Err(detail!("the worker never ran: no preemption"));
        }
        core::hint::spin_loop();
    }
    check("suspend worker", call(worker, Label::TcbSuspend, &[], &[]))?;
    Ok(detail!("spins_before_preemption={spins}"))
}

extern "C" fn faulting_worker() -> ! {
    // SAFETY: executes ud2 on purpose: the kernel must fault this thread only.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

fn fault_suspends() -> Outcome {
    spawn(faulting_worker)?;
    // The worker runs, faults and is suspended; the root keeps running.
    yield_now();
    yield_now();
    Ok(detail!("root_survived=1"))
}

/// Answers calls: label + 1, first word doubled, and the caller's badge.
extern "C" fn echo_server() -> ! {
    let endpoint = SERVER_ENDPOINT.load(Ordering::SeqCst);
    let mut message = recv(endpoint);
    loop {
        message = reply_recv(endpoint, message.label + 1, &[message.words[0] * 2, message.badge]);
    }
}

fn badged(endpoint: CPtr, badge: u64) -> Result<CPtr, Detail> {
    strata_rt::root::mint(endpoint, Rights::all(), badge).map_err(|e| detail!("mint badge {badge:#x}: {e}"))
}

fn ipc_same_space() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    SERVER_ENDPOINT.store(endpoint, Ordering::SeqCst);
    let server = spawn(echo_server)?;
    let client = badged(endpoint, 0x5a)?;
    for round in 1..=3u64 {
        let reply = ipc_call(client, 7, &[21 * round]);
        if reply.label != 8 || reply.words[0] != 42 * round || reply.words[1] != 0x5a {
            return Err(detail!("round {round}: reply label {} words {:?}", reply.label, reply.words));
        }
    }
    check("suspend server", call(server, Label::TcbSuspend, &[], &[]))?;
    Ok(detail!("calls=3 badge=0x5a"))
}

fn ipc_cross_space() -> Outcome {
    let pml4 = second_space()?;
    let endpoint = make(ObjectType::Endpoint, 0)?;
    SERVER_ENDPOINT.store(endpoint, Ordering::SeqCst);
    let server = spawn_in(echo_server, pml4, 0)?;
    let client = badged(endpoint, 0x77)?;
    let reply = ipc_call(client, 1, &[500]);
    if reply.label != 2 || reply.words[0] != 1000 || reply.words[1] != 0x77 {
        return Err(detail!("reply label {} words {:?}", reply.label, reply.words));
    }
    check("suspend server", call(server, Label::TcbSuspend, &[], &[]))?;
    Ok(detail!("server_in_second_address_space=1 badge=0x77"))
}

/// A server at `entry` in a second address space, waiting on a new
/// endpoint; returns it, a client capability to the endpoint with `badge`,
/// and the endpoint. One call has been made: the first finds the server
/// not yet waiting, and after it, it waits.
fn waiting_server(entry: extern "C" fn() -> !, badge: u64) -> Result<(CPtr, CPtr, CPtr), Detail> {
    let pml4 = second_space()?;
    let endpoint = make(ObjectType::Endpoint, 0)?;
    SERVER_ENDPOINT.store(endpoint, Ordering::SeqCst);
    let server = spawn_in(entry, pml4, 0)?;
    let client = badged(endpoint, badge)?;
    let _ = ipc_call(client, 1, &[1]);
    Ok((server, client, endpoint))
}

/// Calls to a server in another address space that waits in `ReplyRecv`
/// go through the kernel's fastpath both ways (its counter shows it), with
/// the same results as the general path: register and IPC-buffer words,
/// badge and label. A call with an extra capability takes the general path.
fn ipc_fastpath() -> Outcome {
    let (server, client, endpoint) = waiting_server(echo_server, 0x99)?;
    let fastpath = || strata_rt::debug_counters()[3];
    let before = fastpath();
    for round in 1..=5u64 {
        let reply = ipc_call(client, 3, &[round, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        if reply.label != 4 || reply.words[0] != 2 * round || reply.words[1] != 0x99 {
            return Err(detail!("round {round}: reply label {} words {:?}", reply.label, reply.words));
        }
    }
    let fast = fastpath() - before;
    if fast != 10 {
        return Err(detail!("{fast} of 10 calls and replies took the fastpath"));
    }
    let before = fastpath();
    let reply = strata_rt::ipc_call_with_caps(client, 5, &[50], &[endpoint]);
    let with_cap = fastpath() - before;
    if reply.label != 6 || reply.words[0] != 100 || with_cap != 1 {
        return Err(detail!(
            "call with a capability: label {} words {:?}, fastpath {with_cap}",
            reply.label,
            reply.words
        ));
    }
    check("suspend server", call(server, Label::TcbSuspend, &[], &[]))?;
    Ok(detail!("fastpath_calls={fast} general_path_call_with_cap=1"))
}

/// Answers every call with the sum and number of the words it brought
/// (those past the eighth from its IPC buffer, if it has one), and the
/// badge (label + 1).
extern "C" fn sum_server() -> ! {
    let endpoint = SERVER_ENDPOINT.load(Ordering::SeqCst);
    let mut message = recv(endpoint);
    loop {
        let length = usize::from(message.length);
        let mut words = [0u64; 12];
        words[..8].copy_from_slice(&message.words);
        if length > 8 {
            strata_rt::sys::message_words(8, &mut words[8..length.min(12)]);
        }
        let sum = words[..length.min(12)].iter().sum();
        message = reply_recv(endpoint, message.label + 1, &[sum, length as u64, message.badge]);
    }
}

/// A `Call` of `length` words (`sent`, those past the eighth through the
/// IPC buffer) to a `sum_server`: checks the reply (the server saw
/// `seen` words) and that the message registers past its three words are
/// the caller's own (copying more would hand it the server's).
fn sum_call(client: CPtr, sent: &[u64; 12], length: usize, seen: usize) -> Result<(), Detail> {
    strata_rt::sys::set_message_words(8, &sent[8..]);
    let info =
        MessageInfo::new(10 + length as u64, 0, length as u8).encode().map_err(|e| detail!("{e:?}"))?;
    let registers = core::array::from_fn(|i| sent[i]);
    let (badge, info, words) = strata_rt::sys::syscall_with_badge(Syscall::Call, client, info, registers);
    let reply = MessageInfo::decode(info);
    let expected = [sent[..seen].iter().sum(), seen as u64, 0x77];
    if badge != 0 || reply.label != 11 + length as u64 || reply.length != 3 || words[..3] != expected {
        return Err(detail!("{length} words: badge {badge}, reply {reply:?}, words {words:x?}"));
    }
    if words[3..] != sent[3..8] {
        return Err(detail!(
            "{length} words: registers past the reply {:x?}, were {:x?}",
            &words[3..],
            &sent[3..8]
        ));
    }
    Ok(())
}

/// Calls across address spaces with 0 to 12 words, to a server with an
/// IPC buffer and to one without (which gets the first eight): each call
/// and reply takes the fastpath and carries exactly its words.
fn ipc_fastpath_lengths() -> Outcome {
    let pml4 = second_space()?;
    let fastpath = || strata_rt::debug_counters()[3];
    let own_buffer = strata_rt::sys::ipc_buffer_address();
    strata_rt::root::tables_for(pml4, own_buffer).map_err(|e| detail!("buffer tables: {e}"))?;
    // One CPtr names each server's endpoint in turn: the fastpath's cached
    // lookup (the slot) must find the capability now in it.
    let client = strata_rt::root::fresh_slot();
    for buffer in [own_buffer, 0] {
        let endpoint = make(ObjectType::Endpoint, 0)?;
        SERVER_ENDPOINT.store(endpoint, Ordering::SeqCst);
        let stack_page = next_stack_page();
        let spec = ThreadSpec {
            entry: sum_server,
            vspace: pml4,
            stack_page,
            ipc_buffer: buffer,
            fault_endpoint: 0,
            priority: 255,
        };
        let server = spawn_thread(spec)?;
        let _ = cnode_op(Label::CNodeDelete, &[client, DEPTH]);
        check(
            "mint",
            cnode_op(Label::CNodeMint, &[client, DEPTH, endpoint, DEPTH, Rights::all().bits(), 0x77]),
        )?;
        let _ = ipc_call(client, 1, &[1]);
        let before = fastpath();
        for length in 0..=12 {
            let sent = core::array::from_fn(|i| 0xc0de_0000 + 0x100 * length as u64 + i as u64);
            let seen = if buffer == 0 { length.min(8) } else { length };
            sum_call(client, &sent, length, seen)?;
        }
        let fast = fastpath() - before;
        check("suspend server", call(server, Label::TcbSuspend, &[], &[]))?;
        if fast != 26 {
            return Err(detail!("IPC buffer {buffer:#x}: {fast} of 26 calls and replies took the fastpath"));
        }
    }
    Ok(detail!("fastpath_calls=2x26 lengths=0..=12"))
}

/// The fastpath switches to a thread at a higher priority than the caller
/// (the `Call` to a server above the client), and leaves a switch to a
/// lower one (the reply) to the general path; both give the same results.
fn ipc_fastpath_priorities() -> Outcome {
    let (server, client, _) = waiting_server(sum_server, 0x77)?;
    let fastpath = || strata_rt::debug_counters()[3];
    let mut counts = [0; 2];
    for (round, priority) in [254u64, 255].into_iter().enumerate() {
        check("own priority", call(slot::TCB, Label::TcbSetPriority, &[priority, 255], &[slot::TCB]))?;
        let before = fastpath();
        for length in 1..=3 {
            sum_call(client, &core::array::from_fn(|i| 7 * i as u64 + priority), length, length)?;
        }
        counts[round] = fastpath() - before;
    }
    check("suspend server", call(server, Label::TcbSuspend, &[], &[]))?;
    if counts != [3, 6] {
        return Err(detail!("fastpath calls {counts:?} below and at the server's priority, expected [3, 6]"));
    }
    Ok(detail!("fastpath_calls_below={} at={}", counts[0], counts[1]))
}

/// A thread in the root's address space whose IPC buffer is at
/// `buffer` in the frame `frame` (mapped there already), priority 255.
fn spawn_with_buffer(entry: extern "C" fn() -> !, buffer: u64, frame: CPtr) -> Result<CPtr, Detail> {
    let stack_page = next_stack_page();
    let stack = make(ObjectType::Frame4K, 0)?;
    let rw = (Rights::READ | Rights::WRITE).bits();
    check("map stack", call(stack, Label::FrameMap, &[stack_page, rw, 0], &[slot::VSPACE]))?;
    let tcb = make(ObjectType::Tcb, 0)?;
    check("configure", call(tcb, Label::TcbConfigure, &[buffer, 0], &[slot::CNODE, slot::VSPACE, frame]))?;
    check("priority", call(tcb, Label::TcbSetPriority, &[255, 255], &[slot::TCB]))?;
    let mut registers = [0u64; 18];
    (registers[15], registers[16], registers[17]) = (entry as usize as u64, stack_page + 4096 - 8, 0x202);
    check("registers", call(tcb, Label::TcbWriteRegisters, &registers, &[]))?;
    check("resume", call(tcb, Label::TcbResume, &[], &[]))?;
    Ok(tcb)
}

/// The message words of the IPC buffer at `buffer`.
fn buffer_words(buffer: u64) -> *mut u64 {
    (buffer + core::mem::offset_of!(bootinfo::IpcBuffer, message) as u64) as *mut u64
}

/// Receives one 12-word message in the IPC buffer 8 bytes into the shared
/// page, and signals the sum of its words.
extern "C" fn overlap_server() -> ! {
    let message = recv(SERVER_ENDPOINT.load(Ordering::SeqCst));
    let words = buffer_words(SHARED_PAGE.load(Ordering::SeqCst) + 8);
    // SAFETY: the thread's IPC buffer is mapped read-write there.
    let rest: u64 = (8..12).map(|i| unsafe { words.add(i).read_volatile() }).sum();
    FLAG.store(message.words.iter().sum::<u64>() + rest, Ordering::SeqCst);
    signal(SIGNAL_A.load(Ordering::SeqCst));
    loop {
        let _ = recv(SERVER_ENDPOINT.load(Ordering::SeqCst));
    }
}

/// Calls with words 1 to 12, from the IPC buffer at the start of the page.
extern "C" fn overlap_client() -> ! {
    let words = buffer_words(SHARED_PAGE.load(Ordering::SeqCst));
    for i in 8..12 {
        // SAFETY: the thread's IPC buffer is mapped read-write there.
        unsafe { words.add(i).write_volatile(i as u64 + 1) };
    }
    let info = MessageInfo::new(1, 0, 12).encode().unwrap_or(0);
    let registers = core::array::from_fn(|i| i as u64 + 1);
    let _ = strata_rt::sys::syscall_with_badge(
        Syscall::Call,
        SERVER_ENDPOINT.load(Ordering::SeqCst),
        info,
        registers,
    );
    loop {
        yield_now();
    }
}

/// Two threads whose IPC buffers share a frame, the receiver's 8 bytes
/// after the sender's: a 12-word message arrives whole, as the general
/// path (which reads the message before writing it) delivers it. The
/// root waits on a notification, so the client is alone at the top and
/// the fastpath is asked first: it must decline.
fn ipc_overlapping_buffers() -> Outcome {
    let page = next_stack_page();
    SHARED_PAGE.store(page, Ordering::SeqCst);
    let frame = make(ObjectType::Frame4K, 0)?;
    let rw = (Rights::READ | Rights::WRITE).bits();
    check("map shared page", call(frame, Label::FrameMap, &[page, rw, 0], &[slot::VSPACE]))?;
    SERVER_ENDPOINT.store(make(ObjectType::Endpoint, 0)?, Ordering::SeqCst);
    let done = make(ObjectType::Notification, 0)?;
    SIGNAL_A.store(badged(done, 1)?, Ordering::SeqCst);
    FLAG.store(0, Ordering::SeqCst);
    let server = spawn_with_buffer(overlap_server, page + 8, frame)?;
    let client = spawn_with_buffer(overlap_client, page, frame)?;
    let _ = recv(done);
    let sum = FLAG.load(Ordering::SeqCst);
    for thread in [client, server] {
        check("suspend", call(thread, Label::TcbSuspend, &[], &[]))?;
    }
    if sum != (1..=12).sum() {
        return Err(detail!("the server's 12 words summed to {sum}, expected 78"));
    }
    Ok(detail!("sum={sum}"))
}

/// Receives a call, says so, and replies only when released.
extern "C" fn held_server() -> ! {
    loop {
        let _ = recv(SERVER_ENDPOINT.load(Ordering::SeqCst));
        signal(SIGNAL_A.load(Ordering::SeqCst));
        let _ = recv(WAIT_NOTIFICATION.load(Ordering::SeqCst));
        reply(0, &[1]);
    }
}

/// Calls the held server, then marks that it ran on.
extern "C" fn stranded_client() -> ! {
    let _ = ipc_call(SERVER_ENDPOINT.load(Ordering::SeqCst), 1, &[1]);
    COUNTER.store(1, Ordering::SeqCst);
    loop {
        yield_now();
    }
}

/// A client whose address space is revoked while it waits for a reply
/// resumes in none: it takes a page fault at its next instruction, and
/// does not run on in the address space of the thread before it.
fn thread_without_vspace_faults() -> Outcome {
    let (server_space, client_space) = (second_space()?, second_space()?);
    SERVER_ENDPOINT.store(make(ObjectType::Endpoint, 0)?, Ordering::SeqCst);
    let (called, release) = (make(ObjectType::Notification, 0)?, make(ObjectType::Notification, 0)?);
    SIGNAL_A.store(badged(called, 1)?, Ordering::SeqCst);
    WAIT_NOTIFICATION.store(release, Ordering::SeqCst);
    COUNTER.store(0, Ordering::SeqCst);
    let faults = make(ObjectType::Endpoint, 0)?;
    let server = spawn_in(held_server, server_space, 0)?;
    let client = spawn_in(stranded_client, client_space, faults)?;
    let _ = recv(called);
    check("revoke the client's address space", cnode_op(Label::CNodeRevoke, &[client_space, DEPTH]))?;
    signal(badged(release, 1)?);
    let fault = recv(faults);
    for thread in [client, server] {
        check("suspend", call(thread, Label::TcbSuspend, &[], &[]))?;
    }
    let ran_on = COUNTER.load(Ordering::SeqCst);
    if fault.label != 1 || fault.words[0] != 14 || ran_on != 0 {
        return Err(detail!("fault label {} vector {}; ran on: {ran_on}", fault.label, fault.words[0]));
    }
    Ok(detail!("page_fault_at={:#x}", fault.words[3]))
}

/// A second address space with this program's image mapped as here (text
/// read-execute, data read-write, so statics are shared) and the scratch
/// page table for thread stacks.
fn second_space() -> Result<CPtr, Detail> {
    use strata_rt::root::{address_space, share_image, tables_for};
    let pml4 = address_space().map_err(|e| detail!("address space: {e}"))?;
    share_image(pml4, (&raw const __data_start) as u64).map_err(|e| detail!("share image: {e}"))?;
    tables_for(pml4, SCRATCH_PAGE).map_err(|e| detail!("stack tables: {e}"))?;
    Ok(pml4)
}

extern "C" fn waiter() -> ! {
    let notification = WAIT_NOTIFICATION.load(Ordering::SeqCst);
    loop {
        let message = recv(notification);
        WOKEN_WITH.store(message.badge, Ordering::SeqCst);
    }
}

fn notification() -> Outcome {
    let notification = make(ObjectType::Notification, 0)?;
    let (low, high) = (badged(notification, 0b01)?, badged(notification, 0b10)?);
    signal(low);
    signal(high);
    let word = poll(notification);
    if word != 0b11 || poll(notification) != 0 {
        return Err(detail!("signals gave word {word:#b}, expected 0b11 then 0"));
    }
    WAIT_NOTIFICATION.store(notification, Ordering::SeqCst);
    let thread = spawn(waiter)?;
    yield_now(); // the waiter blocks on the notification (or soon will)
    signal(high);
    yield_until(|| WOKEN_WITH.load(Ordering::SeqCst) != 0);
    let woken = WOKEN_WITH.load(Ordering::SeqCst);
    check("suspend waiter", call(thread, Label::TcbSuspend, &[], &[]))?;
    if woken != 0b10 {
        return Err(detail!("the waiter woke with {woken:#b}, expected 0b10"));
    }
    Ok(detail!("or_word=0b11 wakeup_badge=0b10"))
}

extern "C" fn pager_client() -> ! {
    // SAFETY: faults until the pager maps the page; then a plain read.
    let value = unsafe { (PAGER_ADDRESS as *const u64).read_volatile() };
    PAGED_VALUE.store(value, Ordering::SeqCst);
    loop {
        yield_now();
    }
}

fn fault_handler() -> Outcome {
    let endpoint = make(ObjectType::Endpoint, 0)?;
    let client = spawn_in(pager_client, slot::VSPACE, endpoint)?;
    // Waiting here lets the client run and fault: its fault comes as a message.
    let fault = recv(endpoint);
    let (vector, address) = (fault.words[0], fault.words[3]);
    if fault.label != 1 || vector != 14 || address != PAGER_ADDRESS {
        return Err(detail!("fault label {} vector {vector} address {address:#x}", fault.label));
    }
    let frame = make(ObjectType::Frame4K, 0)?;
    let rw = (Rights::READ | Rights::WRITE).bits();
    check("map the faulting page", call(frame, Label::FrameMap, &[PAGER_ADDRESS, rw, 0], &[slot::VSPACE]))?;
    // SAFETY: the page was just mapped read-write.
    unsafe { (PAGER_ADDRESS as *mut u64).write_volatile(0x00c0_ffee) };
    reply(0, &[]); // the client retries its load
    yield_until(|| PAGED_VALUE.load(Ordering::SeqCst) != 0);
    let value = PAGED_VALUE.load(Ordering::SeqCst);
    check("suspend client", call(client, Label::TcbSuspend, &[], &[]))?;
    if value != 0x00c0_ffee {
        return Err(detail!("the client read {value:#x} after the fault was handled"));
    }
    Ok(detail!("page_fault_at={address:#x} handled_and_resumed=1"))
}

/// CMOS NVRAM through an I/O-port capability for the RTC's index and data
/// ports (0x70, 0x71): a byte written to NVRAM register 0x40 reads back,
/// twice with different values. Then the refusals: the kernel's console
/// port, a range already issued, a port outside the capability, a copy of
/// the control capability.
fn io_ports() -> Outcome {
    use strata_rt::io::{IoPorts, issue};
    let cmos = issue(0x70, 0x71).map_err(|e| detail!("issue 0x70..=0x71: {e}"))?;
    let nvram = |value: u8| -> Result<u8, InvocationError> {
        cmos.write_u8(0x70, 0x40)?;
        cmos.write_u8(0x71, value)?;
        cmos.write_u8(0x70, 0x40)?;
        cmos.read_u8(0x71)
    };
    for value in [0x5a, 0xa5] {
        let read = nvram(value).map_err(|e| detail!("CMOS access: {e}"))?;
        if read != value {
            return Err(detail!("CMOS register 0x40: wrote {value:#x}, read {read:#x}"));
        }
    }
    let refused = |what: &str, result: Result<IoPorts, InvocationError>, expected: InvocationError| {
        expect_error(what, result.map(|_| [0; 4]), expected)
    };
    refused("issue COM1", issue(0x3f8, 0x3ff), InvocationError::InvalidArgument { index: 0 })?;
    refused("issue 0x71 again", issue(0x71, 0x72), InvocationError::RevokeFirst)?;
    expect_error(
        "read 0x72",
        cmos.read_u8(0x72).map(|_| [0; 4]),
        InvocationError::RangeError { min: 0x70, max: 0x71 },
    )?;
    let copy = fresh_slot();
    expect_error(
        "copy the control capability",
        cnode_op(Label::CNodeCopy, &[copy, DEPTH, slot::IO_PORT_CONTROL, DEPTH, Rights::all().bits()]),
        InvocationError::IllegalOperation,
    )?;
    Ok(detail!("CMOS 0x40 round trip 0x5a, 0xa5; refusals as expected"))
}

/// An I/O APIC interrupt delivered to a notification: the PIT (ISA IRQ 0,
/// which the MADT routes to line 2 on QEMU and Bochs) is programmed in mode
/// 0, "interrupt on terminal count" (Intel 8254 datasheet), through an
/// I/O-port capability; the task blocks on the notification bound to the
/// IRQ handler and is woken by the interrupt, with the binding's badge.
/// Twice, acknowledging in between: the kernel masks the line on each
/// interrupt until the ack.
fn irq_notification() -> Outcome {
    use strata_rt::{io, irq};
    let pit = io::issue(0x40, 0x43).map_err(|e| detail!("issue PIT ports: {e}"))?;
    let handler = irq::isa(0).map_err(|e| detail!("handler for ISA IRQ 0: {e}"))?;
    let notification = make(ObjectType::Notification, 0)?;
    let badged = badged(notification, 0b1000)?;
    handler.set_notification(badged).map_err(|e| detail!("bind: {e}"))?;
    for round in 0..2 {
        let program = || -> Result<(), InvocationError> {
            // Channel 0, low then high byte, mode 0, binary: OUT goes low
            // and counting waits for the count.
            pit.write_u8(0x43, 0x30)?;
            handler.ack()?;
            pit.write_u8(0x40, 0x00)?;
            pit.write_u8(0x40, 0x10) // 4096 PIT ticks, about 3.4 ms
        };
        program().map_err(|e| detail!("round {round}: programming the PIT: {e}"))?;
        let message = recv(notification);
        if message.badge != 0b1000 {
            return Err(detail!("round {round}: woken with badge {:#b}, expected 0b1000", message.badge));
        }
    }
    expect_error("a second handler for IRQ 0", irq::isa(0).map(|_| [0; 4]), InvocationError::RevokeFirst)?;
    expect_error(
        "ISA IRQ 16",
        irq::isa(16).map(|_| [0; 4]),
        InvocationError::RangeError { min: 0, max: 15 },
    )?;
    handler.clear().map_err(|e| detail!("clear: {e}"))?;
    Ok(detail!("PIT interrupt woke the task twice with badge 0b1000"))
}

mod faults;
mod fuzz;
mod more;
mod vm;
