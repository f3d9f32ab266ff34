//! System descriptions: `systems/<name>.toml` says which processes the
//! root task starts and what each is given. `cargo xtask` checks one,
//! packs the programs and modules it names, and adds the description itself
//! as the `system` boot module (`strata_abi::system`), which the root task
//! follows. The format is documented in `docs/system-description.md`.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;
use strata_abi::bootinfo::MAX_MODULES;
use strata_abi::system::{self, MAX_PROCESSES, MAX_SHARED, Manifest, NAME_BYTES, Process, encode_name};
use zerocopy::{FromZeros, IntoBytes};

/// A description as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Description {
    #[serde(default)]
    process: Vec<ProcessEntry>,
    #[serde(default)]
    module: Vec<ModuleEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessEntry {
    name: String,
    program: String,
    memory_mib: u64,
    own_memory_mib: Option<u64>,
    priority: Option<u8>,
    #[serde(default)]
    guests: bool,
    #[serde(default)]
    modules: Vec<String>,
    io_ports: Option<[u16; 2]>,
    irq: Option<u8>,
    restarts: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleEntry {
    name: String,
    text: String,
}

/// What goes into a boot module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A program strata builds, by its module name.
    Program(String),
    /// Bytes written in the description.
    Text(String),
}

/// A checked description: the `system` module and the boot modules it names.
#[derive(Debug)]
pub struct System {
    /// The `system` boot module.
    pub manifest: Manifest,
    /// Every other boot module, in order: (name, contents).
    pub modules: Vec<(String, Source)>,
}

impl System {
    /// The `system` module's bytes.
    pub fn manifest_bytes(&self) -> &[u8] {
        self.manifest.as_bytes()
    }
}

/// Priority of a process that does not say (below the root task's).
const DEFAULT_PRIORITY: u8 = 100;
/// How often a process that does not say is restarted after a fault.
const DEFAULT_RESTARTS: u8 = 1;

/// Reads and checks the description at `path`; `programs` are the program
/// modules the image's build makes.
pub fn load(path: &Path, programs: &[&str]) -> Result<System, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text, programs).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks a description's text; `programs` are the program modules built.
pub fn parse(text: &str, programs: &[&str]) -> Result<System, String> {
    let description: Description = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    if description.process.is_empty() {
        return Err("no [[process]]: the root task would have nothing to start".into());
    }
    if description.process.len() > MAX_PROCESSES {
        return Err(format!("{} processes; at most {MAX_PROCESSES}", description.process.len()));
    }
    let mut texts = BTreeSet::new();
    for module in &description.module {
        check_name("module", &module.name)?;
        if module.name == system::MODULE || programs.contains(&module.name.as_str()) {
            return Err(format!(
                "module `{}`: the name is taken (by a program or the description)",
                module.name
            ));
        }
        if !texts.insert(module.name.as_str()) {
            return Err(format!("module `{}` is defined twice", module.name));
        }
    }
    let known = |name: &str| programs.contains(&name) || texts.contains(name);
    let unknown = |what: &str, name: &str| {
        let mut all: Vec<&str> = programs.iter().copied().chain(texts.iter().copied()).collect();
        all.sort_unstable();
        format!(
            "{what} `{name}` is neither a program strata builds nor a [[module]] (known: {})",
            all.join(", ")
        )
    };

    let mut manifest = Manifest {
        magic: system::MAGIC,
        count: description.process.len() as u64,
        processes: [Process::new_zeroed(); MAX_PROCESSES],
    };
    let mut used: Vec<String> = Vec::new();
    let mut names = BTreeSet::new();
    let mut port_owners: Vec<(&str, [u16; 2])> = Vec::new();
    let mut irq_owners: Vec<(&str, u8)> = Vec::new();
    for (entry, slot) in description.process.iter().zip(&mut manifest.processes) {
        let name = entry.name.as_str();
        check_name("process", name)?;
        if !names.insert(name) {
            return Err(format!("process `{name}` is defined twice"));
        }
        let context = |e: String| format!("process `{name}`: {e}");
        if !known(&entry.program) {
            return Err(context(unknown("program", &entry.program)));
        }
        let memory_bits = mib_bits("memory_mib", entry.memory_mib).map_err(context)?;
        let own_memory_bits = match entry.own_memory_mib {
            None => 0,
            Some(mib) => {
                let bits = mib_bits("own_memory_mib", mib).map_err(context)?;
                if bits >= memory_bits {
                    return Err(context(format!(
                        "own_memory_mib = {mib} leaves nothing of memory_mib = {} for its program",
                        entry.memory_mib
                    )));
                }
                bits
            }
        };
        let priority = entry.priority.unwrap_or(DEFAULT_PRIORITY);
        if priority == u8::MAX {
            return Err(context("priority 255 is the root task's; children run below it".into()));
        }
        if entry.modules.len() > MAX_SHARED {
            return Err(context(format!("{} modules; at most {MAX_SHARED}", entry.modules.len())));
        }
        let mut modules = [[0; NAME_BYTES]; MAX_SHARED];
        for (module, encoded) in entry.modules.iter().zip(&mut modules) {
            if !known(module) {
                return Err(context(unknown("module", module)));
            }
            *encoded =
                encode_name(module).ok_or_else(|| context(format!("module name `{module}` too long")))?;
        }
        let (has_ports, ports) = match entry.io_ports {
            None => (0, [0, 0]),
            Some([first, last]) if first > last => {
                return Err(context(format!(
                    "io_ports = [{first:#x}, {last:#x}]: the first is above the last"
                )));
            }
            Some(range) => {
                if let Some((owner, _)) =
                    port_owners.iter().find(|(_, r)| r[0] <= range[1] && range[0] <= r[1])
                {
                    return Err(context(format!(
                        "io_ports [{:#x}, {:#x}] overlap those of `{owner}`: a device has one owner",
                        range[0], range[1]
                    )));
                }
                port_owners.push((name, range));
                (1, range)
            }
        };
        let (has_irq, irq) = match entry.irq {
            None => (0, 0),
            Some(line) if line > 15 => return Err(context(format!("irq {line}: ISA lines are 0-15"))),
            Some(line) => {
                if let Some((owner, _)) = irq_owners.iter().find(|(_, l)| *l == line) {
                    return Err(context(format!(
                        "irq {line} is already `{owner}`'s: a device has one owner"
                    )));
                }
                irq_owners.push((name, line));
                (1, line)
            }
        };
        *slot = Process {
            name: encode_name(name).ok_or_else(|| context("name too long".into()))?,
            program: encode_name(&entry.program).ok_or_else(|| context("program name too long".into()))?,
            modules,
            memory_bits,
            own_memory_bits,
            priority,
            guests: u8::from(entry.guests),
            has_irq,
            irq,
            has_ports,
            restarts: entry.restarts.unwrap_or(DEFAULT_RESTARTS),
            ports,
            reserved2: [0; 4],
        };
        for module in std::iter::once(&entry.program).chain(&entry.modules) {
            if !used.contains(module) {
                used.push(module.clone());
            }
        }
    }
    // The root task's module list holds these and the description.
    if used.len() + 1 > MAX_MODULES {
        return Err(format!(
            "{} boot modules (with the description); the boot-info page lists at most {MAX_MODULES}",
            used.len() + 1
        ));
    }
    let modules = used
        .into_iter()
        .map(|name| {
            let source = match description.module.iter().find(|m| m.name == name) {
                Some(module) => Source::Text(module.text.clone()),
                None => Source::Program(name.clone()),
            };
            (name, source)
        })
        .collect();
    Ok(System { manifest, modules })
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if encode_name(name).is_none() {
        return Err(format!("{what} name `{name}`: 1 to {} bytes, no NUL", NAME_BYTES - 1));
    }
    Ok(())
}

/// `mib` MiB as a power of two of bytes.
fn mib_bits(key: &str, mib: u64) -> Result<u8, String> {
    if !mib.is_power_of_two() || mib > 1 << 20 {
        return Err(format!("{key} = {mib}: a power of two (MiB) is needed, at most 1048576"));
    }
    Ok(20 + mib.trailing_zeros() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_abi::system::decode_name;

    const PROGRAMS: [&str; 3] = ["vmm", "guest-basic", "hello"];

    const TWO_TENANTS: &str = r#"
        [[process]]
        name = "alpha"
        program = "vmm"
        memory_mib = 32
        own_memory_mib = 16
        guests = true
        modules = ["guest-basic", "greeting"]
        io_ports = [0x40, 0x43]
        irq = 0

        [[process]]
        name = "beta"
        program = "vmm"
        memory_mib = 32
        priority = 90
        restarts = 3
        guests = true
        modules = ["guest-basic"]

        [[module]]
        name = "greeting"
        text = "hello\n"
    "#;

    #[test]
    fn a_description_becomes_a_manifest_and_its_modules() {
        let system = parse(TWO_TENANTS, &PROGRAMS).expect("valid");
        let read = Manifest::read(system.manifest_bytes()).expect("reads back");
        let [alpha, beta] = read.processes() else { panic!("two processes") };
        assert_eq!(decode_name(&alpha.name), Some("alpha"));
        assert_eq!((alpha.memory_bits, alpha.own_memory_bits, alpha.priority), (25, 24, 100));
        assert_eq!((alpha.has_ports, alpha.ports, alpha.has_irq, alpha.irq), (1, [0x40, 0x43], 1, 0));
        assert_eq!((beta.priority, beta.own_memory_bits, beta.has_ports, beta.guests), (90, 0, 0, 1));
        assert_eq!((alpha.restarts, beta.restarts), (1, 3));
        assert_eq!(decode_name(&alpha.modules[1]), Some("greeting"));
        // Each module once, programs and text alike.
        assert_eq!(
            system.modules,
            [
                ("vmm".to_owned(), Source::Program("vmm".into())),
                ("guest-basic".to_owned(), Source::Program("guest-basic".into())),
                ("greeting".to_owned(), Source::Text("hello\n".into())),
            ]
        );
    }

    fn error(text: &str) -> String {
        parse(text, &PROGRAMS).expect_err("invalid")
    }

    #[test]
    fn mistakes_are_named() {
        let one = |fields: &str| format!("[[process]]\nname = \"a\"\nprogram = \"hello\"\n{fields}\n");
        assert!(
            error(&one("memory_mib = 3")).contains("memory_mib = 3: a power of two"),
            "{}",
            error(&one("memory_mib = 3"))
        );
        assert!(error(&one("memory_mib = 4\nown_memory_mib = 4")).contains("leaves nothing"));
        assert!(error(&one("memory_mib = 4\npriority = 255")).contains("root task's"));
        assert!(error(&one("memory_mib = 4\nirq = 16")).contains("ISA lines are 0-15"));
        assert!(error(&one("memory_mib = 4\nio_ports = [0x43, 0x40]")).contains("first is above the last"));
        assert!(error(&one("memory_mib = 4\nmodules = [\"nope\"]")).contains("module `nope` is neither"));
        assert!(error(&one("memory_mib = 4\ncolour = 1")).contains("unknown field `colour`"));
        assert!(error(&one("")).contains("missing field `memory_mib`"));
        assert!(error("").contains("no [[process]]"));
        let twice = format!("{}{}", one("memory_mib = 4\nirq = 1"), one("memory_mib = 4\nirq = 1"));
        assert!(error(&twice).contains("process `a` is defined twice"));
        let shared_irq = TWO_TENANTS.replace("priority = 90", "irq = 0");
        assert!(error(&shared_irq).contains("irq 0 is already `alpha`'s"));
        let shared_ports = TWO_TENANTS.replace("priority = 90", "io_ports = [0x42, 0x60]");
        assert!(error(&shared_ports).contains("overlap those of `alpha`"));
        let program = TWO_TENANTS.replacen("program = \"vmm\"", "program = \"vmx\"", 1);
        assert!(error(&program).contains("program `vmx` is neither a program strata builds nor a [[module]] (known: greeting, guest-basic, hello, vmm)"));
    }

    #[test]
    fn the_module_list_must_fit_the_boot_info_page() {
        let modules: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
        let mut text = format!(
            "[[process]]\nname = \"a\"\nprogram = \"hello\"\nmemory_mib = 4\nmodules = {modules:?}\n"
        );
        for module in &modules {
            text += &format!("[[module]]\nname = \"{module}\"\ntext = \"x\"\n");
        }
        assert!(
            error(&text)
                .contains("10 boot modules (with the description); the boot-info page lists at most 8")
        );
    }

    #[test]
    fn the_shipped_descriptions_are_valid() {
        let programs = ["hello", "crasher", "vmm", "guest-basic", "guest-bootsector", "guest-elf64"];
        for entry in std::fs::read_dir(crate::root().join("systems")).expect("systems/") {
            let path = entry.expect("entry").path();
            if let Err(error) = load(&path, &programs) {
                panic!("{error}");
            }
        }
    }
}
