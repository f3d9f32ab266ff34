//! A child process of the root task, showing what a process gets: its own
//! CSpace and memory, a heap, logging through its parent, threads, IPC.
//! It exits with status 0 when everything worked, and panics (which its
//! parent sees as a fault) when something did not.

#![cfg_attr(strata_baremetal, no_std, no_main)]
#![deny(unsafe_code)]

#[cfg(strata_baremetal)]
mod child {
    extern crate alloc;

    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicU64, Ordering};

    use strata_abi::bootinfo::slot;
    use strata_rt::cap::{Cap, Endpoint, Untyped};
    use strata_rt::logger::{self, Output};
    use strata_rt::root::{self, ThreadSpec};
    use strata_rt::{boot_info, parent};

    strata_rt::entry!(main);

    #[global_allocator]
    static HEAP: strata_rt::heap::Heap<{ 64 * 1024 }> = strata_rt::heap::Heap::new();

    /// Where the helper thread's stack goes.
    const STACK_PAGE: u64 = 0x10_0000_0000;

    static SERVICE: AtomicU64 = AtomicU64::new(0);

    /// Answers each call with its first word doubled.
    extern "C" fn doubler() -> ! {
        let endpoint: Cap<Endpoint> = Cap::from_raw(SERVICE.load(Ordering::SeqCst));
        let mut request = endpoint.recv();
        loop {
            request = endpoint.reply_recv(0, &[request.words[0] * 2]);
        }
    }

    fn main() -> ! {
        logger::init(Output::Parent, log::LevelFilter::Info);
        let info = boot_info();
        let memory = info.untypeds().first().map_or(0, |u| 1u64 << u.size_bits);
        log::info!(
            "hello from a child process: {} CNode slots, {} KiB of my own memory",
            1u64 << info.cnode_radix,
            memory / 1024
        );

        // The heap.
        let squares: Vec<u64> = (1..=100).map(|n| n * n).collect();
        let (used, free) = HEAP.usage();
        log::info!(
            "heap: sum of the first 100 squares is {}, {used} bytes used, {free} free",
            squares.iter().sum::<u64>()
        );

        // Objects from its own memory, a thread, and a call to it.
        let untyped: Cap<Untyped> = Cap::from_raw(info.untyped_slots.start);
        let endpoint = untyped.retype::<Endpoint>(0).unwrap_or_else(|e| panic!("endpoint: {e}"));
        SERVICE.store(endpoint.raw(), Ordering::SeqCst);
        root::tables_for(slot::VSPACE, STACK_PAGE).unwrap_or_else(|e| panic!("stack tables: {e}"));
        let spec = ThreadSpec {
            entry: doubler,
            vspace: slot::VSPACE,
            stack_page: STACK_PAGE,
            ipc_buffer: 0,
            fault_endpoint: slot::FAULT_HANDLER,
            priority: 100,
        };
        root::spawn(spec).unwrap_or_else(|e| panic!("thread: {e}"));
        let reply = endpoint.call(1, &[21]);
        log::info!("IPC inside the child: 21 doubled is {}", reply.words[0]);
        parent::exit(if reply.words[0] == 42 { 0 } else { 1 })
    }
}

#[cfg(not(strata_baremetal))]
fn main() {
    eprintln!("strata-hello is a strata child process; the root task starts it from a boot module");
    std::process::exit(2);
}
