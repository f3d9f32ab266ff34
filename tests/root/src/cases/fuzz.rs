//! The in-emulator system-call fuzzer: a thread issues seeded
//! pseudo-random system calls and invocations, valid and invalid, on the
//! capabilities of a sandbox CSpace, and the kernel must neither panic nor
//! hang. The run is reproducible from the printed seed (`cargo xtask test
//! --fuzz-seed SEED`): call `n` depends only on the seed and `n`.
//!
//! **The sandbox.** The fuzzing thread runs in an address space of its own
//! (this program's image, shared) with a CSpace of 256 slots holding: the
//! CNode itself, a 256 KiB Untyped, a PML4 with an ASID and a PDPT, page
//! directory and page table, a frame, a notification, an unconfigured TCB,
//! a copy of the ASID pool, an I/O port (0x80, the POST port), a VCPU bound
//! to the fuzzing thread itself with a GuestSpace (so `VmEnter` runs real
//! guests in whatever state the fuzzer gave them) and, in slot 255, its
//! fault endpoint, a badged endpoint to the root. Everything in it, and the
//! thread itself, is made from one 2 MiB Untyped. Guest memory can only be
//! frames the kernel zeroed, so a guest cannot loop forever: it runs into
//! an exit.
//!
//! **Supervision.** The root (priority 255) serves the fault endpoint and
//! resumes the thread after each fault. A watchdog at priority 1 runs only
//! when neither can: the fuzzer is then stuck (blocked on an object of its
//! own making, or stopped after deleting its fault endpoint). The root then
//! revokes the epoch's Untyped, which deletes the sandbox and the thread,
//! and starts a new epoch at the next call. A resumed thread (`TcbResume`)
//! is never invoked, so no garbage thread runs.

use strata_abi::syscall::Syscall;
use strata_rt::cap::{Cap, Untyped};

use super::*;

/// Calls per run (CI runs this in every boot suite).
pub(super) const CALLS: u64 = 100_000;
/// The seed when the image has no `fuzz-seed` module.
const DEFAULT_SEED: u64 = 0x5eed_0000_f022;
/// Name of the boot module holding the seed (hexadecimal text).
pub(super) const SEED_MODULE: &str = "fuzz-seed";
const FUZZER_PRIORITY: u64 = 200;
const WATCHDOG_PRIORITY: u64 = 1;
const SANDBOX_RADIX: u64 = 8;
const FAULT_SLOT: u64 = 255;
const FUZZER_BADGE: u64 = 0xf0;
const WATCHDOG_BADGE: u64 = 0xd0;
/// The fuzzer's stack, in its address space.
const FUZZER_STACK: u64 = SCRATCH_PAGE + 0x20_0000;
/// An invalid system call number the fuzzer ends with.
const FINISHED: u64 = 0xf022_d04e;

static SEED: AtomicU64 = AtomicU64::new(0);
static NEXT_CALL: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
static WATCHDOG_CAP: AtomicU64 = AtomicU64::new(0);
/// Calls that returned success (label 0).
static SUCCEEDED: AtomicU64 = AtomicU64::new(0);

/// xorshift64*, seeded per call through splitmix64.
struct Rng(u64);

impl Rng {
    fn for_call(seed: u64, call: u64) -> Self {
        let mut z = seed ^ call.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// Every invocation label, so that most calls reach a decoder.
const LABELS: [Label; 33] = [
    Label::UntypedRetype,
    Label::CNodeRevoke,
    Label::CNodeDelete,
    Label::CNodeCopy,
    Label::CNodeMint,
    Label::CNodeMove,
    Label::CNodeMutate,
    Label::PageTableMap,
    Label::PageTableUnmap,
    Label::FrameMap,
    Label::FrameUnmap,
    Label::FrameGetAddress,
    Label::AsidControlMakePool,
    Label::AsidPoolAssign,
    Label::TcbConfigure,
    Label::TcbSetPriority,
    Label::TcbWriteRegisters,
    Label::TcbSuspend,
    Label::TcbBindNotification,
    Label::TcbUnbindNotification,
    Label::TcbReadRegisters,
    Label::IoPortControlIssue,
    Label::IoPortIn,
    Label::IoPortOut,
    Label::IrqControlGetIsa,
    Label::IrqControlGetLine,
    Label::IrqHandlerAck,
    Label::IrqHandlerSetNotification,
    Label::IrqHandlerClear,
    Label::VcpuSetTcb,
    Label::VcpuSetSpace,
    Label::VcpuReadState,
    Label::VcpuWriteState,
];

/// The labels of the object a sandbox starts with in `slot`.
fn family(slot: u64) -> Option<&'static [Label]> {
    use Label::*;
    Some(match slot {
        1 => &[CNodeRevoke, CNodeDelete, CNodeCopy, CNodeMint, CNodeMove, CNodeMutate],
        2 => &[UntypedRetype],
        3 | 11 => &[AsidPoolAssign],
        4..=6 => &[PageTableMap, PageTableUnmap],
        7 => &[FrameMap, FrameUnmap, FrameGetAddress],
        10 => &[
            TcbConfigure,
            TcbSetPriority,
            TcbWriteRegisters,
            TcbSuspend,
            TcbBindNotification,
            TcbUnbindNotification,
            TcbReadRegisters,
        ],
        12 => &[IoPortIn, IoPortOut],
        13 => &[VcpuSetTcb, VcpuSetSpace, VcpuReadState, VcpuWriteState],
        _ => return None,
    })
}

/// A slot of the sandbox: mostly the populated ones at the bottom, where
/// retypes also tend to put new objects, so that calls get past lookup.
fn slot_index(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0..=5 => rng.below(16),
        6..=8 => rng.below(48),
        _ => rng.below(256),
    }
}

/// A message word: mostly values that mean something to some invocation:
/// a slot, a small number, an object type, a depth, an address, rights.
fn word(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0..=2 => slot_index(rng),
        3 => rng.below(64),
        4 => rng.below(13),
        5 => [64, 64, 64, 0, 1, 8, 63, 65][rng.below(8) as usize],
        6 => 0x1000 * rng.below(0x800) + [0, 0x7f_ffff_f000][rng.below(2) as usize],
        7 => rng.below(16),
        8 => 1 << rng.below(64),
        _ => rng.next(),
    }
}

/// Makes a system call; returns the reply's message info (RSI).
fn raw_syscall(number: u64, rdi: u64, rsi: u64, words: [u64; 8]) -> u64 {
    strata_rt::sys::raw_syscall(number, rdi, rsi, words).1
}

/// Call number `index` of the run seeded with `seed`.
fn one_call(seed: u64, index: u64) {
    let mut rng = Rng::for_call(seed, index);
    let number = match rng.below(200) {
        0..=129 => Syscall::Call as u64,
        130..=145 => Syscall::NbSend as u64,
        146..=161 => Syscall::NbRecv as u64,
        162..=169 => Syscall::Reply as u64,
        170..=177 => Syscall::Yield as u64,
        178..=183 => Syscall::Send as u64,
        // Blocking receives end an epoch more often than not: rare.
        184 => Syscall::Recv as u64,
        185 => Syscall::ReplyRecv as u64,
        186..=187 => Syscall::VmEnter as u64,
        188..=189 => Syscall::DebugCounters as u64,
        // Unknown numbers, never the debug shutdown or console calls.
        _ => match rng.next() {
            n if n == Syscall::DebugShutdown as u64 || n == Syscall::DebugPutChar as u64 => 0,
            n => n,
        },
    };
    let cptr = match rng.below(20) {
        0 => rng.next(),
        1 => rng.below(256) << 56,
        _ => slot_index(&mut rng),
    };
    // Mostly a label the object in the slot understands, if the slot is
    // one the sandbox starts with.
    let mut label = match (rng.below(100), family(cptr)) {
        (0..=69, Some(family)) => family[rng.below(family.len() as u64) as usize] as u64,
        (0..=89, _) => LABELS[rng.below(LABELS.len() as u64) as usize] as u64,
        _ => rng.below(128),
    };
    if label == Label::TcbResume as u64 {
        label = Label::TcbSuspend as u64;
    }
    let length = if rng.percent(90) { rng.below(9) } else { rng.below(24) };
    let extra_caps = if rng.percent(60) { 0 } else { rng.below(4) };
    let words: [u64; 24] = core::array::from_fn(|_| word(&mut rng));
    let caps = [slot_index(&mut rng), slot_index(&mut rng), slot_index(&mut rng)];
    strata_rt::sys::set_extra_caps(&caps[..extra_caps as usize]);
    if length > 8 {
        strata_rt::sys::set_message_words(8, &words[8..length as usize]);
    }
    let info =
        strata_abi::message::MessageInfo::new(label, extra_caps as u8, length as u8).encode().unwrap_or(0);
    let info = if rng.percent(3) { rng.next() } else { info };
    let registers: [u64; 8] = core::array::from_fn(|i| words[i]);
    let reply = raw_syscall(number, cptr, info, registers);
    if number == Syscall::Call as u64 && reply >> 12 == 0 {
        SUCCEEDED.fetch_add(1, Ordering::Relaxed);
    }
}

extern "C" fn fuzzer() -> ! {
    let seed = SEED.load(Ordering::SeqCst);
    loop {
        let index = NEXT_CALL.load(Ordering::SeqCst);
        if index >= CALLS {
            DONE.store(1, Ordering::SeqCst);
            loop {
                let _ = raw_syscall(FINISHED, 0, 0, [0; 8]);
            }
        }
        // Counted before it is made: a call that never returns is not retried.
        NEXT_CALL.store(index + 1, Ordering::SeqCst);
        one_call(seed, index);
    }
}

extern "C" fn watchdog() -> ! {
    let endpoint = WATCHDOG_CAP.load(Ordering::SeqCst);
    loop {
        let _ = ipc_call(endpoint, 0, &[]);
    }
}

/// The root slots holding one epoch's objects (freed after the revoke).
struct Epoch {
    slots: [CPtr; 24],
    count: usize,
    thread: CPtr,
}

impl Epoch {
    fn keep(&mut self, slot: CPtr) -> CPtr {
        if self.count < self.slots.len() {
            self.slots[self.count] = slot;
            self.count += 1;
        }
        slot
    }
}

fn check_step<T>(what: &str, result: Result<T, InvocationError>) -> Result<T, Detail> {
    result.map_err(|e| detail!("{what}: {e}"))
}

/// Builds a sandbox and a fuzzing thread from `memory` and starts it.
fn start_epoch(memory: Cap<Untyped>, space: CPtr, fault: CPtr) -> Result<Epoch, Detail> {
    let mut epoch = Epoch { slots: [0; 24], count: 0, thread: 0 };
    let object = |kind: ObjectType, size: u64, epoch: &mut Epoch| {
        check_step("retype", memory.retype_type(kind, size)).map(|slot| epoch.keep(slot))
    };
    let sandbox = object(ObjectType::CNode, SANDBOX_RADIX, &mut epoch)?;
    let guarded = epoch.keep(fresh_slot());
    check(
        "guard",
        cnode_op(
            Label::CNodeMint,
            &[guarded, DEPTH, sandbox, DEPTH, Rights::all().bits(), 64 - SANDBOX_RADIX],
        ),
    )?;
    let into = |index: u64, source: CPtr, label: Label| {
        let words = [index, SANDBOX_RADIX, source, DEPTH, Rights::all().bits()];
        check("fill the sandbox", call(sandbox, label, &words, &[slot::CNODE]))
    };
    into(1, guarded, Label::CNodeCopy)?;
    let untyped = object(ObjectType::Untyped, 18, &mut epoch)?;
    into(2, untyped, Label::CNodeMove)?;
    let pml4 = object(ObjectType::Pml4, 0, &mut epoch)?;
    check("assign an ASID", call(slot::ASID_POOL, Label::AsidPoolAssign, &[], &[pml4]))?;
    into(3, pml4, Label::CNodeMove)?;
    for (index, kind) in [
        (4, ObjectType::Pdpt),
        (5, ObjectType::PageDirectory),
        (6, ObjectType::PageTable),
        (7, ObjectType::Frame4K),
        (9, ObjectType::Notification),
        (10, ObjectType::Tcb),
    ] {
        let made = object(kind, 0, &mut epoch)?;
        into(index, made, Label::CNodeMove)?;
    }
    into(11, slot::ASID_POOL, Label::CNodeCopy)?;
    let port = fresh_slot();
    if call(slot::IO_PORT_CONTROL, Label::IoPortControlIssue, &[0x80, 0x80, port, DEPTH], &[slot::CNODE])
        .is_ok()
    {
        into(12, port, Label::CNodeMove)?;
    }
    strata_rt::slots::free(port);
    into(FAULT_SLOT, fault, Label::CNodeCopy)?;

    // The thread: its stack and IPC buffer in its own address space.
    let stack = object(ObjectType::Frame4K, 0, &mut epoch)?;
    let rw = (Rights::READ | Rights::WRITE).bits();
    check("map the stack", call(stack, Label::FrameMap, &[FUZZER_STACK, rw, 0], &[space]))?;
    let buffer = object(ObjectType::Frame4K, 0, &mut epoch)?;
    let buffer_address = strata_rt::sys::ipc_buffer_address();
    check("map the IPC buffer", call(buffer, Label::FrameMap, &[buffer_address, rw, 0], &[space]))?;
    let thread = object(ObjectType::Tcb, 0, &mut epoch)?;
    check(
        "configure",
        call(thread, Label::TcbConfigure, &[buffer_address, FAULT_SLOT], &[guarded, space, buffer]),
    )?;
    check(
        "priority",
        call(thread, Label::TcbSetPriority, &[FUZZER_PRIORITY, FUZZER_PRIORITY], &[slot::TCB]),
    )?;
    let registers = strata_rt::cap::Registers {
        rip: fuzzer as *const () as usize as u64,
        rsp: FUZZER_STACK + 4096 - 8,
        rflags: 0x202,
        ..Default::default()
    };
    check_step("registers", Cap::<strata_rt::cap::Tcb>::from_raw(thread).write_registers(&registers))?;
    // A VCPU of the thread's own, in a GuestSpace with an ASID.
    let space = object(ObjectType::GuestSpace, 0, &mut epoch)?;
    check("guest ASID", call(slot::ASID_POOL, Label::AsidPoolAssign, &[], &[space]))?;
    let vcpu = object(ObjectType::Vcpu, 0, &mut epoch)?;
    check("VCPU thread", call(vcpu, Label::VcpuSetTcb, &[], &[thread]))?;
    check("VCPU space", call(vcpu, Label::VcpuSetSpace, &[], &[space]))?;
    into(13, vcpu, Label::CNodeMove)?;
    into(14, space, Label::CNodeMove)?;
    check("resume", call(thread, Label::TcbResume, &[], &[]))?;
    epoch.thread = thread;
    Ok(epoch)
}

/// Deletes everything the epoch made (its thread included).
fn end_epoch(memory: Cap<Untyped>, epoch: Epoch) -> Result<(), Detail> {
    let _ = call(epoch.thread, Label::TcbSuspend, &[], &[]);
    check_step("revoke the epoch's memory", memory.reset())?;
    for &slot in &epoch.slots[..epoch.count] {
        strata_rt::slots::free(slot);
    }
    Ok(())
}

/// The seed: from the `fuzz-seed` boot module (hexadecimal) if there is one.
fn seed() -> u64 {
    (0..)
        .map_while(strata_rt::sys::module)
        .find(|(descriptor, _)| descriptor.name() == Some(SEED_MODULE))
        .and_then(|(_, bytes)| core::str::from_utf8(bytes).ok())
        .and_then(|text| u64::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or(DEFAULT_SEED)
}

pub(super) fn syscall_fuzz() -> Outcome {
    let seed = seed();
    println!("fuzz: seed {seed:#x}, {CALLS} calls (reproduce with cargo xtask test --fuzz-seed {seed:#x})");
    SEED.store(seed, Ordering::SeqCst);
    NEXT_CALL.store(0, Ordering::SeqCst);
    DONE.store(0, Ordering::SeqCst);
    SUCCEEDED.store(0, Ordering::SeqCst);
    let endpoint = make(ObjectType::Endpoint, 0)?;
    let to_root = Rights::WRITE | Rights::GRANT_REPLY;
    let fault = strata_rt::root::mint(endpoint, to_root, FUZZER_BADGE).map_err(|e| detail!("mint: {e}"))?;
    let watchdog_cap =
        strata_rt::root::mint(endpoint, to_root, WATCHDOG_BADGE).map_err(|e| detail!("mint: {e}"))?;
    WATCHDOG_CAP.store(watchdog_cap, Ordering::SeqCst);
    let memory: Cap<Untyped> = Cap::from_raw(make(ObjectType::Untyped, 21)?);
    let space = second_space()?;
    strata_rt::root::tables_for(space, FUZZER_STACK).map_err(|e| detail!("tables: {e}"))?;
    strata_rt::root::tables_for(space, strata_rt::sys::ipc_buffer_address())
        .map_err(|e| detail!("tables: {e}"))?;
    let dog = spawn_at(watchdog, slot::VSPACE, 0, WATCHDOG_PRIORITY)?;

    let (mut epochs, mut faults, mut stuck) = (1u64, 0u64, 0u64);
    let mut epoch = start_epoch(memory, space, fault)?;
    loop {
        let message = recv(endpoint);
        if DONE.load(Ordering::SeqCst) != 0 {
            break;
        }
        match message.badge {
            FUZZER_BADGE => {
                if message.label == strata_abi::fault::EXCEPTION
                    || message.label == strata_abi::fault::SYSCALL
                {
                    faults += 1;
                }
                reply(0, &[]);
            }
            WATCHDOG_BADGE => {
                // Nothing else can run: the fuzzer is blocked for good, or
                // stopped without its fault endpoint. A new sandbox goes on.
                stuck += 1;
                end_epoch(memory, epoch)?;
                epoch = start_epoch(memory, space, fault)?;
                epochs += 1;
                reply(0, &[]);
            }
            _ => {}
        }
    }
    check("stop the watchdog", call(dog, Label::TcbSuspend, &[], &[]))?;
    end_epoch(memory, epoch)?;
    let calls = NEXT_CALL.load(Ordering::SeqCst);
    // The kernel still works: make an object and signal through it.
    let notification = make(ObjectType::Notification, 0)?;
    signal(badged(notification, 0x42)?);
    if poll(notification) != 0x42 || calls < CALLS {
        return Err(detail!("after the fuzzer: calls {calls}, the kernel no longer signals"));
    }
    let succeeded = SUCCEEDED.load(Ordering::SeqCst);
    Ok(detail!(
        "seed={seed:#x} calls={calls} succeeded={succeeded} epochs={epochs} faults={faults} stuck={stuck}"
    ))
}
