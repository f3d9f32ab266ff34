//! Starting, serving and supervising the children.

use strata_abi::bootinfo;
use strata_abi::fault;
use strata_abi::object::ObjectType;
use strata_rt::cap::{Cap, Untyped};
use strata_rt::logger::{self, Output};
use strata_rt::parent::{self, FAULT_BADGE};
use strata_rt::process::{self, Process, SpawnError};
use strata_rt::server::{self, Request, Response};
use strata_rt::{debug, root, sys};

strata_rt::entry!(main);

/// Memory each child is made from: its objects, image, stack and buffers,
/// and the memory it gets for its own use.
const CHILD_MEMORY_BITS: u8 = 22;
/// Memory a child gets for its own objects (from the above).
const CHILD_OWN_MEMORY_BITS: u8 = 20;
/// Children run below the root, which must always be able to serve them.
const CHILD_PRIORITY: u8 = 100;
/// How often a child that faults is restarted.
const RESTARTS: u32 = 1;

/// A child the root started, and its state.
struct Child {
    name: &'static str,
    image: &'static [u8],
    memory: Cap<Untyped>,
    process: Option<Process>,
    restarts: u32,
}

struct Supervisor {
    endpoint: u64,
    children: heapless::Vec<Child, { bootinfo::MAX_MODULES }>,
}

fn main() -> ! {
    logger::init(Output::Console("root"), log::LevelFilter::Info);
    let info = strata_rt::boot_info();
    let memory: u64 = info.untypeds().iter().filter(|u| u.device == 0).map(|u| 1u64 << u.size_bits).sum();
    log::info!(
        "{} KiB of memory in {} Untypeds, {} boot module(s)",
        memory / 1024,
        info.untyped_count,
        info.module_count
    );
    let endpoint = match root::retype(ObjectType::Endpoint, 0) {
        Ok(endpoint) => endpoint,
        Err(error) => stop(format_args!("cannot make the endpoint children talk to: {error}")),
    };
    let mut supervisor = Supervisor { endpoint, children: heapless::Vec::new() };
    for index in 0..info.modules().len() {
        supervisor.start_module(index);
    }
    supervisor.check_done();
    server::serve(endpoint, |request| supervisor.handle(request))
}

/// Logs `why` and stops the root task (nothing can be supervised).
fn stop(why: core::fmt::Arguments<'_>) -> ! {
    log::error!("{why}");
    debug::shutdown(strata_abi::exit::ExitCode::KernelFailure)
}

impl Supervisor {
    fn start_module(&mut self, index: usize) {
        let Some((descriptor, image)) = sys::module(index) else { return };
        let name = descriptor.name().unwrap_or("(unnamed)");
        let memory = match root::retype(ObjectType::Untyped, u64::from(CHILD_MEMORY_BITS)) {
            Ok(memory) => Cap::from_raw(memory),
            Err(error) => {
                log::error!(
                    "{name}: not started: no {} KiB of memory for it: {error}",
                    1 << (CHILD_MEMORY_BITS - 10)
                );
                return;
            }
        };
        let badge = self.children.len() as u64 + 1;
        let mut child = Child { name, image, memory, process: None, restarts: 0 };
        match spawn(&child, self.endpoint, badge) {
            Ok(process) => {
                log::info!(
                    "started {name}: entry {:#x}, {} image pages, {} KiB of memory",
                    process.entry,
                    process.image_pages,
                    1 << (CHILD_MEMORY_BITS - 10)
                );
                child.process = Some(process);
            }
            Err(error) => log::error!("{name}: not started: {error}"),
        }
        // Kept even if it did not start: its memory is not lost.
        let _ = self.children.push(child);
    }

    fn handle(&mut self, request: Request) -> Response {
        let id = request.badge & !FAULT_BADGE;
        let Some(index) = (id as usize).checked_sub(1).filter(|&i| i < self.children.len()) else {
            return Response::reply(parent::UNKNOWN_REQUEST, &[]);
        };
        if request.badge & FAULT_BADGE != 0 {
            self.fault(index, &request);
            return Response::NoReply;
        }
        match request.label {
            parent::LOG => {
                let mut words = [0u64; 120];
                let words = request.words(&mut words);
                let mut bytes = [0u8; parent::MAX_LOG_BYTES];
                let text = parent::unpack(words, &mut bytes);
                let text = core::str::from_utf8(text).unwrap_or("(not UTF-8)");
                strata_rt::logger::write_line(Output::Console(self.children[index].name), text);
                Response::reply(0, &[])
            }
            parent::EXIT => {
                let status = request.word(0);
                log::info!("{} exited with status {status}", self.children[index].name);
                self.end(index);
                self.check_done();
                Response::NoReply
            }
            _ => Response::reply(parent::UNKNOWN_REQUEST, &[]),
        }
    }

    /// A child faulted: report it, end it, and restart it if it has
    /// restarts left.
    fn fault(&mut self, index: usize, request: &Request) {
        let name = self.children[index].name;
        let words: [u64; fault::WORDS] = core::array::from_fn(|i| request.word(i));
        match request.label {
            fault::EXCEPTION => {
                let (mnemonic, description) = fault::exception_name(words[0]);
                log::warn!(
                    "{name} faulted: {mnemonic} {description} at {:#x}, error code {:#x}, address {:#x}",
                    words[2],
                    words[1],
                    words[3]
                );
            }
            fault::SYSCALL => log::warn!(
                "{name} faulted: invalid system call {:#x} (or a capability that cannot do it) at {:#x}",
                words[0],
                words[2]
            ),
            other => log::warn!("{name} faulted (fault label {other})"),
        }
        self.end(index);
        let child = &mut self.children[index];
        if child.restarts >= RESTARTS {
            log::warn!("{name} is not restarted again ({} of {RESTARTS} restarts used)", child.restarts);
            self.check_done();
            return;
        }
        child.restarts += 1;
        match spawn(child, self.endpoint, index as u64 + 1) {
            Ok(process) => {
                log::info!("restarted {name} ({} of {RESTARTS}), in the same memory", child.restarts);
                child.process = Some(process);
            }
            Err(error) => {
                log::error!("{name}: restart failed: {error}");
                self.check_done();
            }
        }
    }

    /// Ends a child: everything it is made of is deleted.
    fn end(&mut self, index: usize) {
        let child = &mut self.children[index];
        if let Some(process) = child.process.take() {
            match process.destroy() {
                Ok(memory) => child.memory = memory,
                Err(error) => log::error!("{}: could not be ended cleanly: {error}", child.name),
            }
        }
    }

    /// When no child runs any more, says so (and ends a test run).
    fn check_done(&self) {
        if self.children.iter().any(|c| c.process.is_some()) {
            return;
        }
        log::info!("all children have finished");
        if cfg!(feature = "exit-when-done") {
            debug::shutdown(strata_abi::exit::ExitCode::Success);
        }
    }
}

fn spawn(child: &Child, endpoint: u64, badge: u64) -> Result<Process, SpawnError> {
    process::spawn(&process::Spec {
        image: child.image,
        memory: child.memory,
        child_memory_bits: Some(CHILD_OWN_MEMORY_BITS),
        priority: CHILD_PRIORITY,
        parent_endpoint: endpoint,
        badge,
        asid_pool: strata_rt::cap::own::ASID_POOL,
    })
}
