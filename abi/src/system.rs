//! The system description as the root task reads it: the boot module
//! [`MODULE`], which `cargo xtask` makes from a TOML description
//! (`systems/*.toml`, see `docs/system-description.md`).
//!
//! It lists the processes the root task starts, in order, and what each
//! is given: its program (a boot module), its memory, its priority, the
//! boot modules it may read, and the devices it owns (an I/O port range
//! and an ISA interrupt line). A process that runs guests (a tenant's
//! VMM) also gets an ASID pool of its own for its GuestSpaces. Nothing
//! else: a process reaches no other process's objects, so a tenant's
//! VMM crashing or misbehaving leaves every other tenant as it was.
//!
//! The layout is fixed (`repr(C)`, little-endian) so that the host tool
//! writes it and the root task reads it without parsing.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The name of the boot module holding the description.
pub const MODULE: &str = "system";
/// [`Manifest::magic`].
pub const MAGIC: u64 = u64::from_le_bytes(*b"strsys01");
/// Most processes one description starts.
pub const MAX_PROCESSES: usize = 8;
/// Most boot modules one process may read.
pub const MAX_SHARED: usize = 8;
/// Bytes of a name, NUL-padded (so at most `NAME_BYTES - 1` long).
pub const NAME_BYTES: usize = 32;

/// A NUL-padded name.
pub type Name = [u8; NAME_BYTES];

/// One process and what it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Process {
    /// Its name in the log.
    pub name: Name,
    /// The boot module its program is.
    pub program: Name,
    /// The boot modules it may read (all-zero names: none), which it sees
    /// in its boot-info page as the root task sees all of them.
    pub modules: [Name; MAX_SHARED],
    /// Everything it is made of comes from an Untyped of this many bits.
    pub memory_bits: u8,
    /// Of which it gets an Untyped of this many bits for its own use (0: none).
    pub own_memory_bits: u8,
    /// Its priority.
    pub priority: u8,
    /// Non-zero: it runs guests, and gets an ASID pool of its own.
    pub guests: u8,
    /// Non-zero: it owns ISA interrupt line `irq`.
    pub has_irq: u8,
    /// The ISA interrupt line (0–15).
    pub irq: u8,
    /// Non-zero: it owns the I/O ports `ports[0]..=ports[1]`.
    pub has_ports: u8,
    /// How often it is restarted after a fault.
    pub restarts: u8,
    /// First and last I/O port it owns.
    pub ports: [u16; 2],
    /// Zero.
    pub reserved2: [u8; 4],
}

impl Process {
    /// Whether the record is one `cargo xtask` can write: named, with a
    /// program, memory of 1 MiB to 128 TiB and less of it its own, a
    /// priority below the root task's, an ISA line and an ordered port
    /// range.
    pub fn check(&self) -> Result<(), &'static str> {
        if decode_name(&self.name).is_none() || decode_name(&self.program).is_none() {
            return Err("a name or program name that is empty or not UTF-8");
        }
        if !(20..=47).contains(&self.memory_bits) {
            return Err("memory outside 1 MiB to 128 TiB");
        }
        if self.own_memory_bits != 0 && !(12..self.memory_bits).contains(&self.own_memory_bits) {
            return Err("its own memory is not smaller than its memory");
        }
        if self.priority == u8::MAX {
            return Err("priority 255, the root task's");
        }
        if self.has_irq != 0 && self.irq > 15 {
            return Err("an IRQ above 15");
        }
        if self.has_ports != 0 && self.ports[0] > self.ports[1] {
            return Err("an I/O port range whose first port is above its last");
        }
        Ok(())
    }
}

/// The description: [`MAGIC`], then `count` processes.
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Manifest {
    /// [`MAGIC`].
    pub magic: u64,
    /// Number of valid entries in `processes`.
    pub count: u64,
    /// The processes, in the order they are started.
    pub processes: [Process; MAX_PROCESSES],
}

/// Why a boot module is not a description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestError {
    /// Shorter than a description, or not 8-byte aligned.
    Truncated {
        /// Its size.
        size: usize,
    },
    /// It does not start with [`MAGIC`].
    Magic,
    /// More processes than [`MAX_PROCESSES`].
    Count(u64),
    /// Process `index` has a field no description can hold.
    Process {
        /// Its place in the list.
        index: usize,
        /// What is wrong.
        what: &'static str,
    },
}

impl core::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated { size } => write!(
                f,
                "{size} bytes, shorter than a system description ({} bytes) or misaligned",
                core::mem::size_of::<Manifest>()
            ),
            Self::Magic => write!(f, "not a system description (no magic {:?})", b"strsys01"),
            Self::Count(count) => write!(f, "{count} processes, more than {MAX_PROCESSES}"),
            Self::Process { index, what } => write!(f, "process {index}: {what}"),
        }
    }
}

impl Manifest {
    /// The description at the start of a boot module's bytes (8-byte aligned).
    pub fn read(bytes: &[u8]) -> Result<&Self, ManifestError> {
        let (manifest, _) =
            Self::ref_from_prefix(bytes).map_err(|_| ManifestError::Truncated { size: bytes.len() })?;
        if manifest.magic != MAGIC {
            return Err(ManifestError::Magic);
        }
        if manifest.count > MAX_PROCESSES as u64 {
            return Err(ManifestError::Count(manifest.count));
        }
        for (index, process) in manifest.processes().iter().enumerate() {
            process.check().map_err(|what| ManifestError::Process { index, what })?;
        }
        Ok(manifest)
    }

    /// The valid entries.
    pub fn processes(&self) -> &[Process] {
        &self.processes[..self.count as usize]
    }
}

/// `name` as a NUL-padded [`Name`], or `None` if it is empty, too long or
/// holds a NUL.
pub fn encode_name(name: &str) -> Option<Name> {
    if name.is_empty() || name.len() >= NAME_BYTES || name.contains('\0') {
        return None;
    }
    let mut bytes = [0; NAME_BYTES];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Some(bytes)
}

/// A [`Name`] up to its first NUL; `None` if it is empty or not UTF-8.
pub fn decode_name(name: &Name) -> Option<&str> {
    let length = name.iter().position(|&b| b == 0).unwrap_or(NAME_BYTES);
    core::str::from_utf8(&name[..length]).ok().filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    fn process(name: &str) -> Process {
        Process {
            name: encode_name(name).expect("short"),
            program: encode_name("vmm").expect("short"),
            memory_bits: 25,
            own_memory_bits: 24,
            priority: 100,
            guests: 1,
            has_ports: 1,
            restarts: 1,
            ports: [0x40, 0x43],
            ..Process::new_zeroed()
        }
    }

    #[test]
    fn a_written_description_reads_back() {
        let mut manifest = Manifest { magic: MAGIC, count: 2, processes: [process("unused"); MAX_PROCESSES] };
        manifest.processes[0] = process("alpha");
        manifest.processes[1] = process("beta");
        let read = Manifest::read(manifest.as_bytes()).expect("valid");
        let names: Vec<_> = read.processes().iter().map(|p| decode_name(&p.name).expect("named")).collect();
        assert_eq!(names, ["alpha", "beta"]);
        assert_eq!(read.processes()[1].ports, [0x40, 0x43]);
    }

    #[test]
    fn bad_modules_are_refused_with_their_reason() {
        let manifest = Manifest { magic: MAGIC, count: 9, processes: [process("a"); MAX_PROCESSES] };
        assert_eq!(Manifest::read(manifest.as_bytes()).expect_err("invalid"), ManifestError::Count(9));
        let text = b"this module is text, not a description";
        assert_eq!(Manifest::read(text).expect_err("invalid"), ManifestError::Truncated { size: text.len() });
        let mut wrong = manifest.clone();
        wrong.magic ^= 1;
        assert_eq!(Manifest::read(wrong.as_bytes()).expect_err("invalid"), ManifestError::Magic);
    }

    /// A change that breaks a record, and what the error must say.
    type Breakage = (fn(&mut Process), &'static str);

    #[test]
    fn records_no_description_holds_are_refused() {
        let broken: [Breakage; 5] = [
            (|p| p.memory_bits = 5, "memory outside"),
            (|p| p.own_memory_bits = p.memory_bits, "own memory"),
            (|p| p.priority = 255, "priority 255"),
            (|p| (p.has_irq, p.irq) = (1, 16), "IRQ above 15"),
            (|p| p.program = [0; NAME_BYTES], "program name"),
        ];
        for (breaks, message) in broken {
            let mut manifest = Manifest { magic: MAGIC, count: 2, processes: [process("a"); MAX_PROCESSES] };
            breaks(&mut manifest.processes[1]);
            let error = Manifest::read(manifest.as_bytes()).expect_err("invalid");
            assert!(matches!(error, ManifestError::Process { index: 1, .. }), "{error:?}");
            assert!(error.to_string().contains(message), "{error}");
        }
    }

    #[test]
    fn names_are_checked_and_padded() {
        assert_eq!(decode_name(&encode_name("guest-basic").expect("short")), Some("guest-basic"));
        assert_eq!(encode_name(""), None);
        assert_eq!(encode_name(&"x".repeat(NAME_BYTES)), None);
        assert!(encode_name(&"x".repeat(NAME_BYTES - 1)).is_some());
        assert_eq!(decode_name(&[0; NAME_BYTES]), None);
    }
}
