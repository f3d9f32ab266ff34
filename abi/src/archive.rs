//! The strata boot archive: the kernel and every boot module in one file.
//!
//! `cargo xtask image` writes it (as `strata.initrd`); the loader finds it as
//! the first boot module (QEMU `-initrd`, GRUB `module2`), checks it, loads
//! the kernel entry and hands the other entries to the kernel as Limine
//! modules. The loader trusts nothing in it, so [`Archive::parse`] checks
//! every field and every byte before anything is used.
//!
//! Layout (all integers little-endian):
//!
//! | offset | size | what |
//! |---|---|---|
//! | 0 | 64 | [`Header`]: magic `STRATAAR`, version, entry count, total size, CRC-32 of the entry table |
//! | 64 | 128 × n | [`RawEntry`] table: name, string, offset, size, kind, CRC-32 of the data |
//! | page-aligned | | entry data, each starting on a 4 KiB boundary, in table order, zero padding between |
//!
//! Entry data starts on a page boundary so that modules can be handed to the
//! kernel in place, as Limine requires. Every byte of the file is covered by
//! a check (magic, version, reserved-zero fields, CRC-32s, zero padding), so
//! any corruption of the file is reported rather than loaded.

use core::fmt;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The first eight bytes of every archive.
pub const MAGIC: [u8; 8] = *b"STRATAAR";
/// The format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Entry data alignment, and the alignment of the archive itself in memory.
pub const ALIGN: u64 = 4096;
/// Most entries an archive may hold.
pub const MAX_ENTRIES: usize = 64;
/// Bytes available for an entry's name and for its string.
pub const TEXT_LEN: usize = 48;

/// The fixed-size archive header.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: U32,
    /// Number of [`RawEntry`] records following the header.
    pub entry_count: U32,
    /// Size of the whole archive in bytes, padding included.
    pub total_size: U64,
    /// CRC-32 (IEEE) of the entry table.
    pub table_crc32: U32,
    /// Must be zero.
    pub reserved: [u8; 36],
}

/// One record of the entry table, as stored.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RawEntry {
    /// UTF-8 name, NUL-padded; non-empty, unique in the archive.
    pub name: [u8; TEXT_LEN],
    /// UTF-8 string passed with the module (its command line), NUL-padded.
    pub string: [u8; TEXT_LEN],
    /// Offset of the data from the start of the archive; a multiple of [`ALIGN`].
    pub offset: U64,
    /// Size of the data in bytes.
    pub size: U64,
    /// An [`EntryKind`] discriminant.
    pub kind: U32,
    /// CRC-32 (IEEE) of the data.
    pub data_crc32: U32,
}

const HEADER_LEN: usize = core::mem::size_of::<Header>();
const ENTRY_LEN: usize = core::mem::size_of::<RawEntry>();

/// What an entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum EntryKind {
    /// The kernel ELF. Exactly one per archive.
    Kernel = 1,
    /// A boot module handed to the kernel (root task, server, guest image, data).
    Module = 2,
}

impl TryFrom<u32> for EntryKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        match value {
            1 => Ok(Self::Kernel),
            2 => Ok(Self::Module),
            other => Err(other),
        }
    }
}

/// A name or string field, kept as stored so errors can show it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Text([u8; TEXT_LEN]);

impl Text {
    /// The text up to the first NUL, if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(TEXT_LEN);
        core::str::from_utf8(&self.0[..len]).ok()
    }

    /// The stored bytes, NUL padding included (a C string when shorter than
    /// [`TEXT_LEN`]).
    pub fn as_bytes(&self) -> &[u8; TEXT_LEN] {
        &self.0
    }

    fn is_well_formed(&self) -> bool {
        let len = self.0.iter().position(|&b| b == 0).unwrap_or(TEXT_LEN);
        self.0[len..].iter().all(|&b| b == 0) && self.as_str().is_some()
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(text) => f.write_str(text),
            None => write!(f, "<non-UTF-8 name {:02x?}>", &self.0[..8]),
        }
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Why an archive was refused. The `Display` form is the message shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveError {
    /// The archive is shorter than its header and entry table.
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the header and table need.
        need: usize,
    },
    /// The first eight bytes are not [`MAGIC`].
    BadMagic {
        /// What was found instead.
        found: [u8; 8],
    },
    /// The version field is not [`VERSION`].
    UnsupportedVersion {
        /// Version found.
        found: u32,
    },
    /// More entries than [`MAX_ENTRIES`], or none.
    BadEntryCount {
        /// Count found.
        count: u32,
    },
    /// The header's total size differs from the size of the archive given.
    SizeMismatch {
        /// Size the header claims.
        header: u64,
        /// Size of the data given.
        actual: usize,
    },
    /// A reserved header field is not zero.
    ReservedNotZero,
    /// The entry table does not match its CRC-32.
    TableChecksum {
        /// CRC the header records.
        expected: u32,
        /// CRC of the table as found.
        found: u32,
    },
    /// An entry's name or string is empty, not UTF-8, or not NUL-padded.
    BadText {
        /// Entry index.
        index: usize,
    },
    /// Two entries have the same name.
    DuplicateName {
        /// The repeated name.
        name: Text,
    },
    /// An entry's kind is not an [`EntryKind`].
    BadKind {
        /// Entry name.
        name: Text,
        /// Kind found.
        kind: u32,
    },
    /// An entry's data does not start on an [`ALIGN`] boundary.
    Misaligned {
        /// Entry name.
        name: Text,
        /// Offset found.
        offset: u64,
    },
    /// An entry's data is not inside the archive, or not after the previous
    /// entry's data.
    OutOfOrder {
        /// Entry name.
        name: Text,
        /// Offset found.
        offset: u64,
        /// Size found.
        size: u64,
    },
    /// Bytes between entries (or after the table) are not zero.
    PaddingNotZero {
        /// Offset of the first non-zero padding byte.
        offset: u64,
    },
    /// An entry's data does not match its CRC-32.
    DataChecksum {
        /// Entry name.
        name: Text,
        /// CRC the table records.
        expected: u32,
        /// CRC of the data as found.
        found: u32,
    },
    /// The archive has no kernel entry.
    NoKernel,
    /// The archive has more than one kernel entry.
    SecondKernel {
        /// Name of the second kernel entry.
        name: Text,
    },
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { len, need } => {
                write!(f, "archive is truncated: {len} bytes, but its header and entry table need {need}")
            }
            Self::BadMagic { found } => {
                write!(f, "not a strata boot archive: magic is {found:02x?}, expected \"STRATAAR\"")
            }
            Self::UnsupportedVersion { found } => write!(
                f,
                "archive format version {found} is not supported (this build reads version {VERSION})"
            ),
            Self::BadEntryCount { count } => {
                write!(f, "archive has {count} entries; between 1 and {MAX_ENTRIES} are allowed")
            }
            Self::SizeMismatch { header, actual } => write!(
                f,
                "archive header says {header} bytes but {actual} were loaded (truncated or padded module?)"
            ),
            Self::ReservedNotZero => write!(f, "archive header has non-zero reserved bytes"),
            Self::TableChecksum { expected, found } => {
                write!(f, "archive entry table is corrupt: CRC-32 {found:#010x}, expected {expected:#010x}")
            }
            Self::BadText { index } => {
                write!(f, "archive entry {index} has an empty, non-UTF-8 or unterminated name or string")
            }
            Self::DuplicateName { name } => write!(f, "archive has two entries named {name}"),
            Self::BadKind { name, kind } => {
                write!(f, "archive entry {name} has unknown kind {kind}")
            }
            Self::Misaligned { name, offset } => {
                write!(f, "archive entry {name} starts at offset {offset:#x}, not on a {ALIGN}-byte boundary")
            }
            Self::OutOfOrder { name, offset, size } => write!(
                f,
                "archive entry {name} ({size} bytes at offset {offset:#x}) overlaps another entry or runs past the end"
            ),
            Self::PaddingNotZero { offset } => {
                write!(f, "archive padding at offset {offset:#x} is not zero")
            }
            Self::DataChecksum { name, expected, found } => {
                write!(f, "archive entry {name} is corrupt: CRC-32 {found:#010x}, expected {expected:#010x}")
            }
            Self::NoKernel => write!(f, "archive has no kernel entry"),
            Self::SecondKernel { name } => {
                write!(f, "archive has a second kernel entry, {name}")
            }
        }
    }
}

/// One checked entry.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Entry name (module path).
    pub name: &'a str,
    /// The name as stored, NUL-padded (a C string when shorter than [`TEXT_LEN`]).
    pub name_bytes: &'a [u8; TEXT_LEN],
    /// The entry's string (module command line).
    pub string: &'a str,
    /// The string as stored, NUL-padded.
    pub string_bytes: &'a [u8; TEXT_LEN],
    /// What the entry is.
    pub kind: EntryKind,
    /// Offset of the data from the start of the archive.
    pub offset: u64,
    /// The data.
    pub data: &'a [u8],
}

/// A checked archive: every entry's bounds, alignment and CRC verified.
#[derive(Debug, Clone, Copy)]
pub struct Archive<'a> {
    bytes: &'a [u8],
    table: &'a [RawEntry],
    kernel_index: usize,
}

impl<'a> Archive<'a> {
    /// Checks `bytes` completely and returns the archive, or the first
    /// problem found.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ArchiveError> {
        let Ok((header, rest)) = Header::ref_from_prefix(bytes) else {
            return Err(ArchiveError::Truncated { len: bytes.len(), need: HEADER_LEN });
        };
        if header.magic != MAGIC {
            return Err(ArchiveError::BadMagic { found: header.magic });
        }
        if header.version.get() != VERSION {
            return Err(ArchiveError::UnsupportedVersion { found: header.version.get() });
        }
        let count = header.entry_count.get();
        let entry_count = count as usize;
        if entry_count == 0 || entry_count > MAX_ENTRIES {
            return Err(ArchiveError::BadEntryCount { count });
        }
        if header.total_size.get() != bytes.len() as u64 {
            return Err(ArchiveError::SizeMismatch { header: header.total_size.get(), actual: bytes.len() });
        }
        if header.reserved.iter().any(|&b| b != 0) {
            return Err(ArchiveError::ReservedNotZero);
        }
        let table_len = entry_count * ENTRY_LEN;
        let Ok((table, _)) = <[RawEntry]>::ref_from_prefix_with_elems(rest, entry_count) else {
            return Err(ArchiveError::Truncated { len: bytes.len(), need: HEADER_LEN + table_len });
        };
        let found = crc32fast::hash(table.as_bytes());
        if found != header.table_crc32.get() {
            return Err(ArchiveError::TableChecksum { expected: header.table_crc32.get(), found });
        }

        let mut kernel_index = None;
        // End of the region already accounted for; everything between it and
        // the next entry is padding and must be zero.
        let mut covered = (HEADER_LEN + table_len) as u64;
        for (index, raw) in table.iter().enumerate() {
            let name = Text(raw.name);
            let string = Text(raw.string);
            if !name.is_well_formed() || name.0[0] == 0 || !string.is_well_formed() {
                return Err(ArchiveError::BadText { index });
            }
            if table[..index].iter().any(|earlier| earlier.name == raw.name) {
                return Err(ArchiveError::DuplicateName { name });
            }
            let kind =
                EntryKind::try_from(raw.kind.get()).map_err(|kind| ArchiveError::BadKind { name, kind })?;
            if kind == EntryKind::Kernel {
                if kernel_index.is_some() {
                    return Err(ArchiveError::SecondKernel { name });
                }
                kernel_index = Some(index);
            }
            let (offset, size) = (raw.offset.get(), raw.size.get());
            if offset % ALIGN != 0 {
                return Err(ArchiveError::Misaligned { name, offset });
            }
            let end = offset.checked_add(size);
            if offset < covered || end.is_none_or(|end| end > bytes.len() as u64) {
                return Err(ArchiveError::OutOfOrder { name, offset, size });
            }
            check_zero(bytes, covered, offset)?;
            // In bounds: `offset + size <= bytes.len()` was checked above.
            let data = &bytes[offset as usize..(offset + size) as usize];
            let found = crc32fast::hash(data);
            if found != raw.data_crc32.get() {
                return Err(ArchiveError::DataChecksum { name, expected: raw.data_crc32.get(), found });
            }
            covered = offset + size;
        }
        check_zero(bytes, covered, bytes.len() as u64)?;
        let kernel_index = kernel_index.ok_or(ArchiveError::NoKernel)?;
        Ok(Self { bytes, table, kernel_index })
    }

    /// All entries, in table order.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'a>> + 'a {
        let bytes = self.bytes;
        self.table.iter().map(move |raw| entry_of(bytes, raw))
    }

    /// The kernel entry.
    pub fn kernel(&self) -> Entry<'a> {
        entry_of(self.bytes, &self.table[self.kernel_index])
    }

    /// The module entries (everything but the kernel), in table order.
    pub fn modules(&self) -> impl Iterator<Item = Entry<'a>> + 'a {
        self.entries().filter(|entry| entry.kind == EntryKind::Module)
    }

    /// Size of the archive in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a checked archive holds at least its kernel.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Builds an [`Entry`] from a table record [`Archive::parse`] has checked.
fn entry_of<'a>(bytes: &'a [u8], raw: &'a RawEntry) -> Entry<'a> {
    let (offset, size) = (raw.offset.get(), raw.size.get());
    Entry {
        name: text_of(&raw.name),
        name_bytes: &raw.name,
        string: text_of(&raw.string),
        string_bytes: &raw.string,
        // Checked by `parse`; `Module` is the only other value.
        kind: EntryKind::try_from(raw.kind.get()).unwrap_or(EntryKind::Module),
        offset,
        data: bytes.get(offset as usize..(offset + size) as usize).unwrap_or(&[]),
    }
}

fn text_of(field: &[u8; TEXT_LEN]) -> &str {
    let len = field.iter().position(|&b| b == 0).unwrap_or(TEXT_LEN);
    core::str::from_utf8(&field[..len]).unwrap_or("")
}

fn check_zero(bytes: &[u8], from: u64, to: u64) -> Result<(), ArchiveError> {
    let padding = bytes.get(from as usize..to as usize).unwrap_or(&[]);
    match padding.iter().position(|&b| b != 0) {
        Some(position) => Err(ArchiveError::PaddingNotZero { offset: from + position as u64 }),
        None => Ok(()),
    }
}

/// Why an archive could not be built.
#[cfg(any(feature = "alloc", test))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// A name or string is empty (names only), too long, or contains NUL.
    BadText {
        /// The offending text.
        text: alloc::string::String,
    },
    /// Two entries share a name.
    DuplicateName {
        /// The repeated name.
        name: alloc::string::String,
    },
    /// More than [`MAX_ENTRIES`] entries.
    TooManyEntries,
    /// Not exactly one kernel entry.
    KernelCount {
        /// Kernel entries given.
        count: usize,
    },
}

#[cfg(any(feature = "alloc", test))]
impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadText { text } => write!(
                f,
                "archive entry name or string {text:?} is empty, contains NUL, or is longer than {TEXT_LEN} bytes"
            ),
            Self::DuplicateName { name } => write!(f, "two archive entries are named {name:?}"),
            Self::TooManyEntries => write!(f, "more than {MAX_ENTRIES} archive entries"),
            Self::KernelCount { count } => {
                write!(f, "an archive needs exactly one kernel entry, {count} given")
            }
        }
    }
}

/// Writes archives; the inverse of [`Archive::parse`].
#[cfg(any(feature = "alloc", test))]
#[derive(Debug, Default)]
pub struct Builder {
    entries: alloc::vec::Vec<PendingEntry>,
}

/// An entry added to a [`Builder`], checked but not yet laid out.
#[cfg(any(feature = "alloc", test))]
#[derive(Debug)]
struct PendingEntry {
    kind: EntryKind,
    name: [u8; TEXT_LEN],
    string: [u8; TEXT_LEN],
    data: alloc::vec::Vec<u8>,
}

#[cfg(any(feature = "alloc", test))]
impl Builder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry; checks its name and string now.
    pub fn add(
        &mut self,
        kind: EntryKind,
        name: &str,
        string: &str,
        data: &[u8],
    ) -> Result<&mut Self, BuildError> {
        let name_field = text_field(name, false)?;
        let string_field = text_field(string, true)?;
        if self.entries.iter().any(|entry| entry.name == name_field) {
            return Err(BuildError::DuplicateName { name: name.into() });
        }
        if self.entries.len() == MAX_ENTRIES {
            return Err(BuildError::TooManyEntries);
        }
        self.entries.push(PendingEntry { kind, name: name_field, string: string_field, data: data.to_vec() });
        Ok(self)
    }

    /// Lays the archive out and returns its bytes.
    pub fn finish(&self) -> Result<alloc::vec::Vec<u8>, BuildError> {
        let kernels = self.entries.iter().filter(|entry| entry.kind == EntryKind::Kernel).count();
        if kernels != 1 {
            return Err(BuildError::KernelCount { count: kernels });
        }
        let align_up = |n: u64| n.div_ceil(ALIGN) * ALIGN;
        let mut offset = align_up((HEADER_LEN + ENTRY_LEN * self.entries.len()) as u64);
        let mut table = alloc::vec::Vec::with_capacity(self.entries.len());
        for PendingEntry { kind, name, string, data } in &self.entries {
            table.push(RawEntry {
                name: *name,
                string: *string,
                offset: U64::new(offset),
                size: U64::new(data.len() as u64),
                kind: U32::new(*kind as u32),
                data_crc32: U32::new(crc32fast::hash(data)),
            });
            offset = align_up(offset + data.len() as u64);
        }
        // The last entry is not padded: the archive ends with its data.
        let total = self
            .entries
            .last()
            .zip(table.last())
            .map_or(offset, |(entry, raw)| raw.offset.get() + entry.data.len() as u64);
        let header = Header {
            magic: MAGIC,
            version: U32::new(VERSION),
            entry_count: U32::new(self.entries.len() as u32),
            total_size: U64::new(total),
            table_crc32: U32::new(crc32fast::hash(table.as_slice().as_bytes())),
            reserved: [0; 36],
        };
        let mut bytes = alloc::vec![0u8; total as usize];
        bytes[..HEADER_LEN].copy_from_slice(header.as_bytes());
        bytes[HEADER_LEN..HEADER_LEN + table.len() * ENTRY_LEN].copy_from_slice(table.as_slice().as_bytes());
        for (raw, entry) in table.iter().zip(&self.entries) {
            let start = raw.offset.get() as usize;
            bytes[start..start + entry.data.len()].copy_from_slice(&entry.data);
        }
        Ok(bytes)
    }
}

#[cfg(any(feature = "alloc", test))]
fn text_field(text: &str, may_be_empty: bool) -> Result<[u8; TEXT_LEN], BuildError> {
    if (text.is_empty() && !may_be_empty) || text.len() > TEXT_LEN || text.contains('\0') {
        return Err(BuildError::BadText { text: text.into() });
    }
    let mut field = [0u8; TEXT_LEN];
    field[..text.len()].copy_from_slice(text.as_bytes());
    Ok(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut builder = Builder::new();
        builder
            .add(EntryKind::Kernel, "kernel", "", &[0x7f, b'E', b'L', b'F', 1, 2, 3])
            .and_then(|b| b.add(EntryKind::Module, "root", "log=debug", &[9; 5000]))
            .and_then(|b| b.add(EntryKind::Module, "empty", "", &[]))
            .expect("valid entries");
        builder.finish().expect("one kernel")
    }

    #[test]
    fn round_trip_keeps_every_entry_in_order_and_page_aligned() {
        let bytes = sample();
        let archive = Archive::parse(&bytes).expect("builder output parses");
        let names: Vec<_> = archive.entries().map(|e| (e.name, e.string, e.data.len())).collect();
        assert_eq!(names, [("kernel", "", 7), ("root", "log=debug", 5000), ("empty", "", 0)]);
        assert_eq!(archive.kernel().data, &[0x7f, b'E', b'L', b'F', 1, 2, 3]);
        assert_eq!(archive.modules().count(), 2);
        assert!(archive.entries().all(|e| e.offset % ALIGN == 0));
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(Archive::parse(&bytes[..len]).is_err(), "prefix of {len} bytes accepted");
        }
    }

    #[test]
    fn specific_corruptions_give_specific_errors() {
        let good = sample();
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(Archive::parse(&bad), Err(ArchiveError::BadMagic { .. })));

        let mut bad = good.clone();
        bad[8] = 2;
        assert_eq!(Archive::parse(&bad).err(), Some(ArchiveError::UnsupportedVersion { found: 2 }));

        let mut bad = good.clone();
        bad[2 * ALIGN as usize + 100] ^= 1; // inside "root", the third page
        assert!(matches!(
            Archive::parse(&bad),
            Err(ArchiveError::DataChecksum { name, .. }) if name.as_str() == Some("root")
        ));

        let mut bad = good.clone();
        bad.push(0);
        assert!(matches!(Archive::parse(&bad), Err(ArchiveError::SizeMismatch { .. })));

        let mut bad = good.clone();
        bad[HEADER_LEN + 3 * ENTRY_LEN + 1] = 1; // padding after the table
        assert!(matches!(Archive::parse(&bad), Err(ArchiveError::PaddingNotZero { .. })));
    }

    #[test]
    fn builder_refuses_bad_input() {
        let mut builder = Builder::new();
        assert!(builder.add(EntryKind::Module, "", "", &[]).is_err());
        assert!(builder.add(EntryKind::Module, &"x".repeat(TEXT_LEN + 1), "", &[]).is_err());
        assert!(builder.add(EntryKind::Module, "a\0b", "", &[]).is_err());
        builder.add(EntryKind::Module, "m", "", &[]).expect("fine");
        assert_eq!(
            builder.add(EntryKind::Module, "m", "", &[]).err(),
            Some(BuildError::DuplicateName { name: "m".into() })
        );
        assert_eq!(builder.finish().err(), Some(BuildError::KernelCount { count: 0 }));
    }

    #[test]
    fn archive_without_kernel_or_with_two_is_refused() {
        // Hand-edit the kind of the kernel entry to Module and fix the table CRC.
        let mut bytes = sample();
        let kind_at = HEADER_LEN + 2 * TEXT_LEN + 16;
        bytes[kind_at] = EntryKind::Module as u8;
        refresh_table_crc(&mut bytes, 3);
        assert_eq!(Archive::parse(&bytes).err(), Some(ArchiveError::NoKernel));
        bytes[kind_at + ENTRY_LEN] = EntryKind::Kernel as u8;
        bytes[kind_at] = EntryKind::Kernel as u8;
        refresh_table_crc(&mut bytes, 3);
        assert!(matches!(Archive::parse(&bytes), Err(ArchiveError::SecondKernel { .. })));
    }

    fn refresh_table_crc(bytes: &mut [u8], entries: usize) {
        let crc = crc32fast::hash(&bytes[HEADER_LEN..HEADER_LEN + entries * ENTRY_LEN]);
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    }

    proptest! {
        #[test]
        fn any_single_bit_flip_is_detected(position in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = sample();
            let at = position.index(bytes.len());
            bytes[at] ^= 1 << bit;
            prop_assert!(Archive::parse(&bytes).is_err(), "flip of bit {} at {} accepted", bit, at);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = Archive::parse(&bytes);
        }

        #[test]
        fn arbitrary_contents_round_trip(
            datas in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..9000), 0..5),
        ) {
            let mut builder = Builder::new();
            builder.add(EntryKind::Kernel, "kernel", "", b"k").expect("valid");
            for (i, data) in datas.iter().enumerate() {
                builder.add(EntryKind::Module, &alloc::format!("m{i}"), "s", data).expect("valid");
            }
            let bytes = builder.finish().expect("one kernel");
            let archive = Archive::parse(&bytes).expect("parses");
            let got: Vec<&[u8]> = archive.modules().map(|m| m.data).collect();
            let want: Vec<&[u8]> = datas.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(got, want);
        }
    }
}
