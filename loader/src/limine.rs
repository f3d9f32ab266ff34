//! The bootloader side of the Limine boot protocol, for the subset the
//! kernel uses.
//!
//! Requests are found the way Limine finds them: by scanning the loaded
//! kernel image, at 8-byte alignment, for the common request magic; their IDs
//! are taken from the `limine` crate the kernel uses, so the two sides cannot
//! drift apart. Responses are written into a loader-owned region and every
//! pointer in them is a higher-half direct-map address, as the protocol
//! specifies (base revision 3: the RSDP address is physical).

use core::fmt;

use zerocopy::{Immutable, IntoBytes};

/// Base revision this loader implements.
pub const BASE_REVISION: u64 = 3;
const COMMON_MAGIC: [u64; 2] = [0xc7b1_dd30_df4c_8b88, 0x0a82_e883_a194_f07b];
const BASE_REVISION_MAGIC: [u64; 2] = [0xf956_2b2d_5c95_a6c8, 0x6a7b_3849_4453_6bdc];
/// Offset of the response pointer in every request: id (32) + revision (8).
const RESPONSE_OFFSET: usize = 40;

/// The requests this loader answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Bootloader name and version.
    BootloaderInfo,
    /// Firmware type (always BIOS here).
    FirmwareType,
    /// Higher-half direct map offset.
    Hhdm,
    /// Memory map.
    MemoryMap,
    /// Where the kernel image is, physically and virtually.
    ExecutableAddress,
    /// The kernel file itself (with the command line as its string).
    ExecutableFile,
    /// The kernel command line.
    ExecutableCmdline,
    /// Boot modules.
    Modules,
    /// ACPI RSDP.
    Rsdp,
}

impl RequestKind {
    /// All kinds, in the order responses are written.
    pub const ALL: [Self; 9] = [
        Self::BootloaderInfo,
        Self::FirmwareType,
        Self::Hhdm,
        Self::MemoryMap,
        Self::ExecutableAddress,
        Self::ExecutableFile,
        Self::ExecutableCmdline,
        Self::Modules,
        Self::Rsdp,
    ];

    /// The request ID, from the `limine` crate.
    pub fn id(self) -> [u64; 4] {
        use ::limine::request::*;
        match self {
            Self::BootloaderInfo => *BootloaderInfoRequest::new().id(),
            Self::FirmwareType => *FirmwareTypeRequest::new().id(),
            Self::Hhdm => *HhdmRequest::new().id(),
            Self::MemoryMap => *MemoryMapRequest::new().id(),
            Self::ExecutableAddress => *ExecutableAddressRequest::new().id(),
            Self::ExecutableFile => *ExecutableFileRequest::new().id(),
            Self::ExecutableCmdline => *ExecutableCmdlineRequest::new().id(),
            Self::Modules => *ModuleRequest::new().id(),
            Self::Rsdp => *RsdpRequest::new().id(),
        }
    }
}

/// Where the requests are in the kernel image (offsets into the image).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Requests {
    /// Offset of each known request found, indexed like [`RequestKind::ALL`].
    pub found: [Option<usize>; RequestKind::ALL.len()],
    /// Offset of the base revision tag, and the revision it asks for.
    pub base_revision: Option<(usize, u64)>,
    /// Requests with the common magic but an ID this loader does not answer.
    pub unknown: usize,
}

impl Requests {
    /// Offset of the request of `kind`, if the kernel made one.
    pub fn offset_of(&self, kind: RequestKind) -> Option<usize> {
        RequestKind::ALL.iter().position(|&k| k == kind).and_then(|i| self.found[i])
    }
}

fn word(image: &[u8], at: usize) -> Option<u64> {
    let bytes = image.get(at..at + 8)?;
    let mut raw = [0u8; 8];
    raw.copy_from_slice(bytes);
    Some(u64::from_le_bytes(raw))
}

/// Finds the requests in the loaded kernel image.
pub fn scan(image: &[u8]) -> Requests {
    let ids = RequestKind::ALL.map(RequestKind::id);
    let mut requests = Requests::default();
    for at in (0..image.len().saturating_sub(24)).step_by(8) {
        let (Some(first), Some(second)) = (word(image, at), word(image, at + 8)) else {
            break;
        };
        if [first, second] == BASE_REVISION_MAGIC {
            if let Some(revision) = word(image, at + 16) {
                requests.base_revision = Some((at, revision));
            }
        } else if [first, second] == COMMON_MAGIC {
            let id = [first, second, word(image, at + 16).unwrap_or(0), word(image, at + 24).unwrap_or(0)];
            match ids.iter().position(|known| *known == id) {
                // The response pointer must lie inside the image too.
                Some(i) if at + RESPONSE_OFFSET + 8 <= image.len() => requests.found[i] = Some(at),
                _ => requests.unknown += 1,
            }
        }
    }
    requests
}

/// Answers the base revision tag: supported revisions are acknowledged
/// (revision word set to 0, "loaded revision" word set to ours). Returns
/// whether the kernel's revision is supported.
pub fn answer_base_revision(image: &mut [u8], requests: &Requests) -> bool {
    match requests.base_revision {
        Some((at, revision)) if revision <= BASE_REVISION => {
            write_word(image, at + 8, BASE_REVISION);
            write_word(image, at + 16, 0);
            true
        }
        Some(_) => false,
        // No tag: the kernel asks for revision 0 semantics, which we do not
        // implement; the kernel can tell from the untouched tag it lacks.
        None => false,
    }
}

/// Stores `response` (a direct-map address) in the request at `offset`.
pub fn answer(image: &mut [u8], offset: usize, response: u64) {
    write_word(image, offset + RESPONSE_OFFSET, response);
}

fn write_word(image: &mut [u8], at: usize, value: u64) {
    if let Some(slot) = image.get_mut(at..at + 8) {
        slot.copy_from_slice(&value.to_le_bytes());
    }
}

/// Response layouts (Limine protocol, base revision 3). Pointers are `u64`
/// direct-map addresses in the kernel's address space.
#[allow(missing_docs)] // Field meanings are the protocol's; see its specification.
pub mod layout {
    use super::*;

    /// Bootloader info response.
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct BootloaderInfo {
        pub revision: u64,
        pub name: u64,
        pub version: u64,
    }

    /// Firmware type response (0 = x86 BIOS).
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct FirmwareType {
        pub revision: u64,
        pub firmware_type: u64,
    }

    /// HHDM response.
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct Hhdm {
        pub revision: u64,
        pub offset: u64,
    }

    /// Memory map response: `entries` points at `count` pointers to [`MemoryMapEntry`].
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct MemoryMap {
        pub revision: u64,
        pub count: u64,
        pub entries: u64,
    }

    /// One memory map entry.
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct MemoryMapEntry {
        pub base: u64,
        pub length: u64,
        pub kind: u64,
    }

    /// Executable address response.
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct ExecutableAddress {
        pub revision: u64,
        pub physical_base: u64,
        pub virtual_base: u64,
    }

    /// Executable file response.
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct ExecutableFile {
        pub revision: u64,
        pub file: u64,
    }

    /// Executable command line response.
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct ExecutableCmdline {
        pub revision: u64,
        pub cmdline: u64,
    }

    /// Module response: `modules` points at `count` pointers to [`File`].
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct Modules {
        pub revision: u64,
        pub count: u64,
        pub modules: u64,
    }

    /// RSDP response (physical address under base revision 3).
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct Rsdp {
        pub revision: u64,
        pub address: u64,
    }

    /// A file (module or the kernel itself).
    #[derive(IntoBytes, Immutable)]
    #[repr(C)]
    pub struct File {
        pub revision: u64,
        pub address: u64,
        pub size: u64,
        pub path: u64,
        pub string: u64,
        pub media_type: u32,
        pub unused: u32,
        pub tftp_ip: u32,
        pub tftp_port: u32,
        pub partition_index: u32,
        pub mbr_disk_id: u32,
        pub gpt_disk_id: [u8; 16],
        pub gpt_partition_id: [u8; 16],
        pub partition_uuid: [u8; 16],
    }

    impl File {
        /// A file loaded from the boot archive (no media information).
        pub fn in_memory(address: u64, size: u64, path: u64, string: u64) -> Self {
            Self {
                revision: 0,
                address,
                size,
                path,
                string,
                media_type: 0,
                unused: 0,
                tftp_ip: 0,
                tftp_port: 0,
                partition_index: 0,
                mbr_disk_id: 0,
                gpt_disk_id: [0; 16],
                gpt_partition_id: [0; 16],
                partition_uuid: [0; 16],
            }
        }
    }
}

/// The response region ran out of space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseSpaceExhausted;

impl fmt::Display for ResponseSpaceExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Limine responses do not fit in the loader's response region")
    }
}

/// Appends response structures to a buffer that the kernel will see at
/// `virtual_base`.
pub struct ResponseWriter<'b> {
    buffer: &'b mut [u8],
    used: usize,
    virtual_base: u64,
}

impl<'b> ResponseWriter<'b> {
    /// Writes into `buffer`, which the kernel sees at `virtual_base`.
    pub fn new(buffer: &'b mut [u8], virtual_base: u64) -> Self {
        Self { buffer, used: 0, virtual_base }
    }

    /// Appends `bytes` at 8-byte alignment; returns their kernel address.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Result<u64, ResponseSpaceExhausted> {
        let start = self.used.next_multiple_of(8);
        let end = start.checked_add(bytes.len()).ok_or(ResponseSpaceExhausted)?;
        self.buffer.get_mut(start..end).ok_or(ResponseSpaceExhausted)?.copy_from_slice(bytes);
        self.used = end;
        Ok(self.virtual_base + start as u64)
    }

    /// Appends a structure.
    pub fn push<T: IntoBytes + Immutable>(&mut self, value: &T) -> Result<u64, ResponseSpaceExhausted> {
        self.push_bytes(value.as_bytes())
    }

    /// Appends `text` as a NUL-terminated C string (stopping at any NUL in it).
    pub fn push_c_string(&mut self, text: &[u8]) -> Result<u64, ResponseSpaceExhausted> {
        let len = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        let address = self.push_bytes(&text[..len])?;
        self.push_bytes_unaligned(&[0])?;
        Ok(address)
    }

    /// Appends an array of `u64`s.
    pub fn push_words(&mut self, words: &[u64]) -> Result<u64, ResponseSpaceExhausted> {
        self.push_bytes(words.as_bytes())
    }

    fn push_bytes_unaligned(&mut self, bytes: &[u8]) -> Result<(), ResponseSpaceExhausted> {
        let end = self.used + bytes.len();
        self.buffer.get_mut(self.used..end).ok_or(ResponseSpaceExhausted)?.copy_from_slice(bytes);
        self.used = end;
        Ok(())
    }

    /// Bytes used so far.
    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::layout::*;
    use super::*;
    use limine::request::*;

    /// Writes responses with real host addresses as "kernel addresses" and
    /// reads them back through the `limine` crate the kernel uses: the
    /// layouts here and there must agree field for field.
    #[test]
    fn layouts_read_back_through_the_limine_crate() {
        let mut buffer = vec![0u64; 512];
        let base = buffer.as_ptr() as u64;
        let bytes = buffer.as_mut_slice().as_mut_bytes();
        let mut writer = ResponseWriter::new(bytes, base);
        let name = writer.push_c_string(b"strata-loader").expect("room");
        let version = writer.push_c_string(b"0.1.0").expect("room");
        let info = writer.push(&BootloaderInfo { revision: 0, name, version }).expect("room");
        let hhdm = writer.push(&Hhdm { revision: 0, offset: 0xffff_8000_0000_0000 }).expect("room");
        let e0 = writer.push(&MemoryMapEntry { base: 0x1000, length: 0x9e000, kind: 0 }).expect("room");
        let e1 = writer.push(&MemoryMapEntry { base: 0x100000, length: 0x5000, kind: 6 }).expect("room");
        let list = writer.push_words(&[e0, e1]).expect("room");
        let map = writer.push(&MemoryMap { revision: 0, count: 2, entries: list }).expect("room");
        let path = writer.push_c_string(b"root").expect("room");
        let string = writer.push_c_string(b"log=debug").expect("room");
        let file = writer.push(&File::in_memory(0x1234_5000, 77, path, string)).expect("room");
        let files = writer.push_words(&[file]).expect("room");
        let modules = writer.push(&Modules { revision: 0, count: 1, modules: files }).expect("room");
        let address = writer
            .push(&ExecutableAddress {
                revision: 0,
                physical_base: 0x20_0000,
                virtual_base: 0xffff_ffff_8000_0000,
            })
            .expect("room");
        let cmdline_text = writer.push_c_string(b"log=trace").expect("room");
        let cmdline = writer.push(&ExecutableCmdline { revision: 0, cmdline: cmdline_text }).expect("room");

        // SAFETY: (test) every address above points into `buffer`, which is
        // alive and not written again; each points at the layout the crate's
        // response type declares, which is what this test checks.
        unsafe {
            let info = &*(info as *const limine::response::BootloaderInfoResponse);
            assert_eq!((info.name(), info.version()), ("strata-loader", "0.1.0"));
            let hhdm = &*(hhdm as *const limine::response::HhdmResponse);
            assert_eq!(hhdm.offset(), 0xffff_8000_0000_0000);
            let map = &*(map as *const limine::response::MemoryMapResponse);
            let entries = map.entries();
            assert_eq!(entries.len(), 2);
            assert_eq!((entries[1].base, entries[1].length), (0x100000, 0x5000));
            assert!(entries[1].entry_type == limine::memory_map::EntryType::EXECUTABLE_AND_MODULES);
            let modules = &*(modules as *const limine::response::ModuleResponse);
            let module = modules.modules()[0];
            assert_eq!((module.addr() as u64, module.size()), (0x1234_5000, 77));
            assert_eq!(module.path().to_bytes(), b"root");
            assert_eq!(module.string().to_bytes(), b"log=debug");
            let address = &*(address as *const limine::response::ExecutableAddressResponse);
            assert_eq!(address.physical_base(), 0x20_0000);
            assert_eq!(address.virtual_base(), 0xffff_ffff_8000_0000);
            let cmdline = &*(cmdline as *const limine::response::ExecutableCmdlineResponse);
            assert_eq!(cmdline.cmdline().to_bytes(), b"log=trace");
        }
    }

    #[test]
    fn requests_are_found_answered_and_unknown_ones_counted() {
        // Lay out a fake image holding a base revision tag, two known requests
        // and one unknown request.
        let mut image = vec![0u8; 512];
        let put = |image: &mut Vec<u8>, at: usize, words: &[u64]| {
            for (i, w) in words.iter().enumerate() {
                image[at + 8 * i..at + 8 * i + 8].copy_from_slice(&w.to_le_bytes());
            }
        };
        put(&mut image, 8, &[BASE_REVISION_MAGIC[0], BASE_REVISION_MAGIC[1], 3]);
        put(&mut image, 64, HhdmRequest::new().id());
        put(&mut image, 128, MemoryMapRequest::new().id());
        put(&mut image, 256, &[COMMON_MAGIC[0], COMMON_MAGIC[1], 1, 2]);
        let requests = scan(&image);
        assert_eq!(requests.offset_of(RequestKind::Hhdm), Some(64));
        assert_eq!(requests.offset_of(RequestKind::MemoryMap), Some(128));
        assert_eq!(requests.offset_of(RequestKind::Modules), None);
        assert_eq!(requests.unknown, 1);
        assert_eq!(requests.base_revision, Some((8, 3)));
        assert!(answer_base_revision(&mut image, &requests));
        assert_eq!(word(&image, 16), Some(BASE_REVISION));
        assert_eq!(word(&image, 24), Some(0));
        answer(&mut image, 64, 0xdead_b000);
        assert_eq!(word(&image, 64 + RESPONSE_OFFSET), Some(0xdead_b000));
    }

    #[test]
    fn unsupported_base_revision_is_left_unanswered() {
        let mut image = vec![0u8; 64];
        for (i, w) in [BASE_REVISION_MAGIC[0], BASE_REVISION_MAGIC[1], 9].iter().enumerate() {
            image[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        let requests = scan(&image);
        assert!(!answer_base_revision(&mut image, &requests));
        assert_eq!(word(&image, 16), Some(9));
    }

    #[test]
    fn writer_refuses_to_overflow() {
        let mut buffer = [0u8; 16];
        let mut writer = ResponseWriter::new(&mut buffer, 0x1000);
        assert_eq!(writer.push_bytes(&[1; 9]), Ok(0x1000));
        assert_eq!(writer.push_bytes(&[2; 9]), Err(ResponseSpaceExhausted));
        assert_eq!(writer.used(), 9);
    }
}
