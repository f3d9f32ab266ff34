//! Starting, serving and supervising the children.

use strata_abi::bootinfo::slot;
use strata_abi::error::InvocationError;
use strata_abi::fault;
use strata_abi::invocation::Label;
use strata_abi::object::ObjectType;
use strata_abi::system::{self, Manifest, decode_name};
use strata_rt::cap::{AsidPool, Cap, Untyped};
use strata_rt::logger::{self, Output};
use strata_rt::parent::{self, FAULT_BADGE};
use strata_rt::process::Grants;
use strata_rt::process::{self, Process, SpawnError};
use strata_rt::server::{self, Request, Response};
use strata_rt::{debug, root, sys};

strata_rt::entry!(main);

/// How many children can be supervised.
const MAX_CHILDREN: usize = system::MAX_PROCESSES;

/// A child the root started, what it is given, and its state.
struct Child {
    name: &'static str,
    image: &'static [u8],
    memory: Cap<Untyped>,
    own_memory_bits: Option<u8>,
    priority: u8,
    /// Boot modules it may read (indexes in the root's list).
    modules: heapless::Vec<usize, { system::MAX_SHARED }>,
    grants: Grants,
    process: Option<Process>,
    /// Restarts made, and allowed.
    restarts: u32,
    max_restarts: u32,
}

struct Supervisor {
    endpoint: u64,
    children: heapless::Vec<Child, MAX_CHILDREN>,
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
    match module_named(system::MODULE) {
        Some(index) => supervisor.start_described(index),
        None => stop(format_args!(
            "no system description (boot module `{}`): nothing to start; `cargo xtask` builds images from systems/*.toml",
            system::MODULE
        )),
    }
    supervisor.check_done();
    server::serve(endpoint, |request| supervisor.handle(request))
}

/// Logs `why` and stops the root task (nothing can be supervised).
fn stop(why: core::fmt::Arguments<'_>) -> ! {
    log::error!("{why}");
    debug::shutdown(strata_abi::exit::ExitCode::KernelFailure)
}

/// The index of the boot module called `name`.
fn module_named(name: &str) -> Option<usize> {
    (0..strata_rt::boot_info().modules().len())
        .find(|&i| sys::module(i).and_then(|(d, _)| d.name()) == Some(name))
}

impl Supervisor {
    /// Starts the processes the system description in module `index` lists.
    fn start_described(&mut self, index: usize) {
        let Some((_, bytes)) = sys::module(index) else { return };
        let manifest = match Manifest::read(bytes) {
            Ok(manifest) => manifest,
            Err(error) => stop(format_args!("the `{}` module: {error}", system::MODULE)),
        };
        log::info!("system description: {} process(es)", manifest.count);
        for entry in manifest.processes() {
            let name = decode_name(&entry.name).unwrap_or("(unnamed)");
            match describe(name, entry) {
                Ok(child) => self.launch(child, entry.memory_bits),
                Err(why) => log::error!("{name}: not started: {why}"),
            }
        }
    }

    /// Spawns `child` (made from `memory_bits` of memory) and keeps it.
    fn launch(&mut self, mut child: Child, memory_bits: u8) {
        let badge = self.children.len() as u64 + 1;
        let name = child.name;
        match spawn(&child, self.endpoint, badge) {
            Ok(process) => {
                log::info!(
                    "started {name}: entry {:#x}, {} image pages, {} KiB of memory",
                    process.entry,
                    process.image_pages,
                    1u64 << (memory_bits - 10)
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
        let allowed = child.max_restarts;
        if child.restarts >= allowed {
            log::warn!("{name} is not restarted again ({} of {allowed} restarts used)", child.restarts);
            self.check_done();
            return;
        }
        child.restarts += 1;
        match spawn(child, self.endpoint, index as u64 + 1) {
            Ok(process) => {
                log::info!("restarted {name} ({} of {allowed}), in the same memory", child.restarts);
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

/// Why a described process was not started.
enum Refusal {
    NoModule(&'static str),
    AsidPool(InvocationError),
    Ports([u16; 2], InvocationError),
    Irq(u8, InvocationError),
    Memory(u8, InvocationError),
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoModule(name) => write!(f, "there is no boot module `{name}`"),
            Self::AsidPool(e) => write!(f, "no ASID pool for its guests: {e}"),
            Self::Ports([first, last], e) => {
                write!(f, "I/O ports {first:#x}-{last:#x} are not available: {e}")
            }
            Self::Irq(line, e) => write!(f, "IRQ {line} is not available: {e}"),
            Self::Memory(bits, e) => write!(f, "no {} KiB of memory for it: {e}", 1u64 << (bits - 10)),
        }
    }
}

/// The child a description entry asks for: its program and modules found,
/// the devices and ASID pool it owns obtained, and its memory made.
fn describe(name: &'static str, entry: &'static system::Process) -> Result<Child, Refusal> {
    let module = |wanted: &'static system::Name| {
        let wanted = decode_name(wanted).unwrap_or("(unnamed)");
        module_named(wanted).ok_or(Refusal::NoModule(wanted))
    };
    let image = sys::module(module(&entry.program)?).map_or(&[][..], |(_, image)| image);
    let mut modules = heapless::Vec::new();
    for wanted in entry.modules.iter().filter(|m| m[0] != 0) {
        let _ = modules.push(module(wanted)?);
    }
    let mut grants = Grants::default();
    if entry.guests != 0 {
        grants.asid_pool = Some(asid_pool().map_err(Refusal::AsidPool)?);
    }
    if entry.has_ports != 0 {
        let [first, last] = entry.ports;
        grants.io_ports =
            Some(strata_rt::io::issue(first, last).map_err(|e| Refusal::Ports(entry.ports, e))?.0);
    }
    if entry.has_irq != 0 {
        grants.irq = Some(strata_rt::irq::isa(entry.irq).map_err(|e| Refusal::Irq(entry.irq, e))?.0);
    }
    let memory = root::retype(ObjectType::Untyped, u64::from(entry.memory_bits))
        .map(Cap::from_raw)
        .map_err(|e| Refusal::Memory(entry.memory_bits, e))?;
    Ok(Child {
        name,
        image,
        memory,
        own_memory_bits: (entry.own_memory_bits != 0).then_some(entry.own_memory_bits),
        priority: entry.priority,
        modules,
        grants,
        process: None,
        restarts: 0,
        max_restarts: u32::from(entry.restarts),
    })
}

/// A new ASID pool (512 ASIDs) from a 4 KiB Untyped.
fn asid_pool() -> Result<Cap<AsidPool>, InvocationError> {
    let untyped = root::retype(ObjectType::Untyped, 12)?;
    let destination = root::fresh_slot();
    strata_rt::call(
        slot::ASID_CONTROL,
        Label::AsidControlMakePool,
        &[destination, root::DEPTH],
        &[untyped, slot::CNODE],
    )?;
    Ok(Cap::from_raw(destination))
}

fn spawn(child: &Child, endpoint: u64, badge: u64) -> Result<Process, SpawnError> {
    process::spawn(&process::Spec {
        image: child.image,
        memory: child.memory,
        child_memory_bits: child.own_memory_bits,
        priority: child.priority,
        parent_endpoint: endpoint,
        badge,
        asid_pool: strata_rt::cap::own::ASID_POOL,
        modules: &child.modules,
        grants: child.grants,
    })
}
