//! The metrics.

use core::sync::atomic::{AtomicU64, Ordering};

use strata_abi::bootinfo::slot;
use strata_abi::exit::ExitCode;
use strata_abi::invocation::Label;
use strata_abi::object::{ObjectType, Rights};
use strata_rt::root::{self, ThreadSpec};
use strata_rt::{call, debug, debug_counters, ipc_call, println, recv, reply_recv, signal};

strata_rt::entry!(main);

const WARM_UP: usize = 50;
const SAMPLES: usize = 1000;
/// Pages for other threads' stacks (the image's page table covers them).
const STACKS: u64 = 0x60_0000;
/// Where benchmark frames are mapped and unmapped.
const MAP_ADDRESS: u64 = 0x70_0000;

static SERVER_ENDPOINT: AtomicU64 = AtomicU64::new(0);
static PING: AtomicU64 = AtomicU64::new(0);
static PONG: AtomicU64 = AtomicU64::new(0);
static NEXT_STACK: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" {
    static __data_start: u8;
}

fn rdtsc() -> u64 {
    strata_rt::sys::timestamp()
}

fn stack_page() -> u64 {
    STACKS + 0x1000 * NEXT_STACK.fetch_add(1, Ordering::Relaxed)
}

/// Runs `op` WARM_UP + SAMPLES times; prints the median instructions per
/// run (RDTSC pair overhead removed) and heavy instructions per run.
fn measure(name: &str, overhead: u64, mut op: impl FnMut()) {
    for _ in 0..WARM_UP {
        op();
    }
    let mut samples = [0u64; SAMPLES];
    let before = debug_counters();
    for sample in &mut samples {
        let start = rdtsc();
        op();
        *sample = (rdtsc() - start).saturating_sub(overhead);
    }
    let after = debug_counters();
    samples.sort_unstable();
    let per_run = |i: usize| (after[i] - before[i]) as f64 / SAMPLES as f64;
    // Counters are whole events over SAMPLES runs: print with one decimal.
    let tenths = |i: usize| ((per_run(i) * 10.0) + 0.5) as u64;
    println!(
        "BENCH {name} instructions={} min={} max={} cr3={}.{} xsave={}.{} xrstor={}.{}",
        samples[SAMPLES / 2],
        samples[0],
        samples[SAMPLES - 1],
        tenths(0) / 10,
        tenths(0) % 10,
        tenths(1) / 10,
        tenths(1) % 10,
        tenths(2) / 10,
        tenths(2) % 10
    );
}

/// Answers a call of one word with one word and a longer call with ten:
/// the replies the two round-trip benchmarks need, each of a length known
/// when compiling, as in sel4bench, so that the server's own share of a
/// round trip is the `ReplyRecv` and little else. (Slicing the answer to a
/// length read from the message cost about 20 instructions per round trip.)
extern "C" fn echo_server() -> ! {
    const ANSWER: [u64; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    let endpoint = SERVER_ENDPOINT.load(Ordering::SeqCst);
    let mut message = recv(endpoint);
    loop {
        message = match message.length {
            0 | 1 => reply_recv(endpoint, 0, &ANSWER[..1]),
            _ => reply_recv(endpoint, 0, &ANSWER),
        };
    }
}

extern "C" fn ponger() -> ! {
    let (ping, pong) = (PING.load(Ordering::SeqCst), PONG.load(Ordering::SeqCst));
    loop {
        let _ = recv(ping);
        signal(pong);
    }
}

/// Instructions the benchmark guest runs per round trip besides the one
/// that exits: the `jmp` back to it.
const GUEST_INSTRUCTIONS: u64 = 1;

/// Round trips through the VMM: a real-mode guest loops on CPUID (at
/// 0x1000) or on `OUT 80h, AL` (at 0x1010); each exit returns to this task,
/// which emulates the instruction as a VMM does and enters again. Each is
/// measured twice: the whole round trip, and the `VmEnter` system call
/// alone (the kernel's share: the exit and the entry, with the guest's
/// `jmp` taken out).
fn guest_exits(overhead: u64) {
    use strata_abi::vcpu::{Field, REGISTER_BLOCK_WORDS, Segment, SegmentPart, enter, segment_field};
    let mut guest = strata_rt::vm::Guest::new(2 << 20).unwrap_or_else(|e| fail(e.step, e.error));
    let vcpu = guest.vcpu();
    // cpuid; jmp $-2 / out 0x80, al; jmp $-2
    guest.ram()[0x1000..0x1004].copy_from_slice(&[0x0f, 0xa2, 0xeb, 0xfc]);
    guest.ram()[0x1010..0x1014].copy_from_slice(&[0xe6, 0x80, 0xeb, 0xfc]);
    // Real mode with CS at 0 (the reset state has it at FFFF0000h).
    let cs = |part| segment_field(Segment::Cs, part);
    vcpu.write(&[(cs(SegmentPart::Selector), 0), (cs(SegmentPart::Base), 0)])
        .unwrap_or_else(|e| fail("CS", e));
    use strata_abi::vcpu::Exit;
    for (name, start, expected) in
        [("vmexit_cpuid_roundtrip", 0x1000, Exit::Cpuid), ("vmexit_io_roundtrip", 0x1010, Exit::Io)]
    {
        // The VMM works on the guest's registers in place, in the IPC
        // buffer's register block, which `VmEnter` loads and fills.
        use strata_rt::vm::{register, set_register};
        let mut initial = [0u64; REGISTER_BLOCK_WORDS];
        initial[Field::Rip as usize] = start;
        initial[Field::Rflags as usize] = 2;
        strata_rt::vm::set_registers(&initial);
        // One round trip: enter with the registers, then emulate the exit.
        let round_trip = |timed: bool| -> u64 {
            let start = rdtsc();
            let (_, words) = strata_rt::sys::vm_enter(enter::LOAD_REGISTERS);
            let kernel = rdtsc() - start;
            if words[0] != expected as u64 {
                println!("BENCH error {name}: exit {:#x} ({:#x}), expected {expected:?}", words[0], words[1]);
                debug::shutdown(ExitCode::KernelFailure);
            }
            if words[0] == Exit::Cpuid as u64 {
                let leaf = core::arch::x86_64::__cpuid_count(
                    register(Field::Rax) as u32,
                    register(Field::Rcx) as u32,
                );
                set_register(Field::Rax, u64::from(leaf.eax));
                set_register(Field::Rbx, u64::from(leaf.ebx));
                set_register(Field::Rcx, u64::from(leaf.ecx));
                set_register(Field::Rdx, u64::from(leaf.edx));
            }
            set_register(Field::Rip, register(Field::Rip) + words[3]);
            if timed { kernel } else { 0 }
        };
        measure(name, overhead, || {
            round_trip(false);
        });
        let mut kernel = [0u64; SAMPLES];
        for sample in &mut kernel {
            *sample = round_trip(true).saturating_sub(overhead + GUEST_INSTRUCTIONS);
        }
        kernel.sort_unstable();
        println!(
            "BENCH {name}_kernel instructions={} min={} max={} cr3=0.0 xsave=0.0 xrstor=0.0",
            kernel[SAMPLES / 2],
            kernel[0],
            kernel[SAMPLES - 1]
        );
    }
}

fn fail(what: &str, error: strata_abi::error::InvocationError) -> ! {
    println!("BENCH error {what}: {error}");
    debug::shutdown(ExitCode::KernelFailure)
}

fn main() -> ! {
    let data_start = (&raw const __data_start) as u64;
    let ipc_buffer = strata_rt::sys::ipc_buffer_address();
    // The RDTSC pair itself.
    let mut overhead = [0u64; 64];
    for o in &mut overhead {
        let start = rdtsc();
        *o = rdtsc() - start;
    }
    overhead.sort_unstable();
    let overhead = overhead[32];

    // A second address space with this image, for cross-space servers.
    let other = root::address_space().unwrap_or_else(|e| fail("address space", e));
    root::share_image(other, data_start).unwrap_or_else(|e| fail("share image", e));
    root::tables_for(other, STACKS).unwrap_or_else(|e| fail("stack tables", e));
    root::tables_for(other, ipc_buffer).unwrap_or_else(|e| fail("buffer tables", e));
    root::tables_for(slot::VSPACE, STACKS).unwrap_or_else(|e| fail("stack tables", e));

    measure("null_syscall", overhead, strata_rt::yield_now);

    let endpoint = root::retype(ObjectType::Endpoint, 0).unwrap_or_else(|e| fail("endpoint", e));
    SERVER_ENDPOINT.store(endpoint, Ordering::SeqCst);
    let spec = |vspace| ThreadSpec {
        entry: echo_server,
        vspace,
        stack_page: stack_page(),
        ipc_buffer,
        fault_endpoint: 0,
        priority: 255,
    };
    // In this address space the IPC buffer address is the root's own: the
    // same-space server does without (one-word messages need none).
    let same = root::spawn(ThreadSpec { ipc_buffer: 0, ..spec(slot::VSPACE) })
        .unwrap_or_else(|e| fail("same-space server", e));
    // Once blocked in Recv the server is not runnable; the first call runs it.
    measure("ipc_roundtrip_same_as", overhead, || {
        let _ = ipc_call(endpoint, 0, &[1]);
    });
    let _ = call(same, Label::TcbSuspend, &[], &[]);

    let cross = root::spawn(spec(other)).unwrap_or_else(|e| fail("cross-space server", e));
    measure("ipc_roundtrip_cross_as", overhead, || {
        let _ = ipc_call(endpoint, 0, &[1]);
    });
    measure("ipc_roundtrip_cross_as_10w", overhead, || {
        let _ = ipc_call(endpoint, 0, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    });
    let _ = call(cross, Label::TcbSuspend, &[], &[]);

    let ping = root::retype(ObjectType::Notification, 0).unwrap_or_else(|e| fail("notification", e));
    let pong = root::retype(ObjectType::Notification, 0).unwrap_or_else(|e| fail("notification", e));
    let ping_signal = root::mint(ping, Rights::all(), 1).unwrap_or_else(|e| fail("mint", e));
    let pong_signal = root::mint(pong, Rights::all(), 1).unwrap_or_else(|e| fail("mint", e));
    PING.store(ping, Ordering::SeqCst);
    PONG.store(pong_signal, Ordering::SeqCst);
    let waiter = root::spawn(ThreadSpec { entry: ponger, ipc_buffer: 0, ..spec(other) })
        .unwrap_or_else(|e| fail("waiter", e));
    measure("notification_wakeup_cross_as", overhead, || {
        signal(ping_signal);
        let _ = recv(pong);
    });
    let _ = call(waiter, Label::TcbSuspend, &[], &[]);

    let frame = root::retype(ObjectType::Frame4K, 0).unwrap_or_else(|e| fail("frame", e));
    root::tables_for(slot::VSPACE, MAP_ADDRESS).unwrap_or_else(|e| fail("tables", e));
    let rw = (Rights::READ | Rights::WRITE).bits();
    measure("frame_map_unmap", overhead, || {
        let _ = call(frame, Label::FrameMap, &[MAP_ADDRESS, rw, 0], &[slot::VSPACE]);
        let _ = call(frame, Label::FrameUnmap, &[], &[]);
    });

    let tcb_slot = root::fresh_slot();
    let untyped = root::retype(ObjectType::Untyped, 23).unwrap_or_else(|e| fail("untyped", e));
    measure("retype_tcb", overhead, || {
        let words = [ObjectType::Tcb as u64, 0, slot::CNODE, root::DEPTH, tcb_slot, 1];
        let _ = call(untyped, Label::UntypedRetype, &words, &[slot::CNODE]);
        let _ = call(slot::CNODE, Label::CNodeDelete, &[tcb_slot, root::DEPTH], &[]);
    });

    guest_exits(overhead);

    println!("BENCH done");
    debug::shutdown(ExitCode::Success)
}
