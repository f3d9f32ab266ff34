//! The ACPI Root System Description Pointer (ACPI 6.5 §5.2.5): how the
//! loader finds it when firmware does not say, and how the kernel checks
//! what it was handed; then the system description tables behind it
//! (§5.2.6–5.2.8) and the MADT entries the kernel routes interrupts by
//! (§5.2.12). Everything here reads byte slices, so it is host-tested.

/// "RSD PTR ", the RSDP signature.
pub const SIGNATURE: [u8; 8] = *b"RSD PTR ";
/// Length of an ACPI 1.0 RSDP (checksummed by `checksum`).
pub const V1_LEN: usize = 20;
/// Length of an ACPI 2.0+ RSDP.
pub const V2_LEN: usize = 36;
/// Where BIOS systems keep it: the first KiB of the EBDA, or this range
/// (ACPI §5.2.5.1), on 16-byte boundaries.
pub const BIOS_AREA: core::ops::Range<u64> = 0xe0000..0x100000;

/// A checked RSDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rsdp {
    /// 0 for ACPI 1.0, 2 for ACPI 2.0 and later.
    pub revision: u8,
    /// The OEM identifier.
    pub oem: [u8; 6],
    /// Physical address of the RSDT.
    pub rsdt: u32,
    /// Physical address of the XSDT (revision 2 and later).
    pub xsdt: Option<u64>,
}

/// Why bytes are not a valid RSDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsdpError {
    /// Fewer bytes than the structure needs.
    TooShort,
    /// The signature is not "RSD PTR ".
    BadSignature,
    /// The first 20 bytes do not sum to zero.
    BadChecksum,
    /// The extended (revision 2) bytes do not sum to zero.
    BadExtendedChecksum,
}

impl core::fmt::Display for RsdpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::TooShort => "RSDP is truncated",
            Self::BadSignature => "RSDP signature is not \"RSD PTR \"",
            Self::BadChecksum => "RSDP checksum is wrong",
            Self::BadExtendedChecksum => "RSDP extended checksum is wrong",
        })
    }
}

fn sums_to_zero(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

impl Rsdp {
    /// Checks `bytes` (at least the RSDP; more is ignored).
    pub fn parse(bytes: &[u8]) -> Result<Self, RsdpError> {
        let v1 = bytes.get(..V1_LEN).ok_or(RsdpError::TooShort)?;
        if v1[..8] != SIGNATURE {
            return Err(RsdpError::BadSignature);
        }
        if !sums_to_zero(v1) {
            return Err(RsdpError::BadChecksum);
        }
        let mut oem = [0; 6];
        oem.copy_from_slice(&v1[9..15]);
        let revision = v1[15];
        let rsdt = u32::from_le_bytes([v1[16], v1[17], v1[18], v1[19]]);
        let xsdt = if revision >= 2 {
            let v2 = bytes.get(..V2_LEN).ok_or(RsdpError::TooShort)?;
            if !sums_to_zero(v2) {
                return Err(RsdpError::BadExtendedChecksum);
            }
            let mut raw = [0; 8];
            raw.copy_from_slice(&v2[24..32]);
            Some(u64::from_le_bytes(raw))
        } else {
            None
        };
        Ok(Self { revision, oem, rsdt, xsdt })
    }

    /// Bytes of the structure for its revision.
    pub fn len(&self) -> usize {
        if self.revision >= 2 { V2_LEN } else { V1_LEN }
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Finds a valid RSDP in `area` (bytes starting at physical `base`, which
/// must be 16-byte aligned): returns its physical address.
pub fn scan(area: &[u8], base: u64) -> Option<u64> {
    (0..area.len())
        .step_by(16)
        .find(|&offset| Rsdp::parse(&area[offset..]).is_ok())
        .map(|offset| base + offset as u64)
}

/// Bytes of a system description table header (ACPI §5.2.6).
pub const HEADER_LEN: usize = 36;

/// Why bytes are not a valid system description table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// The bytes end before the length the header gives (or the header).
    TooShort,
    /// The header's length is below the header's own size.
    BadLength,
    /// The table's bytes do not sum to zero.
    BadChecksum,
}

impl core::fmt::Display for TableError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::TooShort => "table is truncated",
            Self::BadLength => "table length is smaller than its header",
            Self::BadChecksum => "table checksum is wrong",
        })
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The length a table header declares (its first 8 bytes are enough).
pub fn table_length(header: &[u8]) -> Option<usize> {
    u32_at(header, 4).map(|length| length as usize)
}

/// Checks a whole table (`bytes` may run past its end) and returns its
/// signature and its bytes, header included.
pub fn check_table(bytes: &[u8]) -> Result<([u8; 4], &[u8]), TableError> {
    let length = table_length(bytes).ok_or(TableError::TooShort)?;
    if length < HEADER_LEN {
        return Err(TableError::BadLength);
    }
    let table = bytes.get(..length).ok_or(TableError::TooShort)?;
    if !sums_to_zero(table) {
        return Err(TableError::BadChecksum);
    }
    Ok(([table[0], table[1], table[2], table[3]], table))
}

/// The table addresses in a checked RSDT (`wide` false: 32-bit entries)
/// or XSDT (`wide` true: 64-bit entries).
pub fn root_entries(table: &[u8], wide: bool) -> impl Iterator<Item = u64> + '_ {
    let width = if wide { 8 } else { 4 };
    table.get(HEADER_LEN..).unwrap_or(&[]).chunks_exact(width).map(|entry| {
        let mut raw = [0u8; 8];
        raw[..entry.len()].copy_from_slice(entry);
        u64::from_le_bytes(raw)
    })
}

/// The polarity of an interrupt input (MADT MPS INTI flags, bits 0-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    /// As the bus says: active high for ISA.
    BusDefault,
    /// Active high.
    High,
    /// Active low.
    Low,
}

/// The trigger mode of an interrupt input (MPS INTI flags, bits 2-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// As the bus says: edge for ISA.
    BusDefault,
    /// Edge-triggered.
    Edge,
    /// Level-triggered.
    Level,
}

/// One MADT interrupt-controller structure (ACPI §5.2.12.2 onwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadtEntry {
    /// An I/O APIC (type 1, §5.2.12.3).
    IoApic {
        /// Its APIC ID.
        id: u8,
        /// Physical address of its registers.
        address: u32,
        /// The first global system interrupt its inputs carry.
        gsi_base: u32,
    },
    /// An ISA interrupt that arrives on another input, or with other
    /// polarity or trigger (type 2, §5.2.12.5).
    InterruptOverride {
        /// The ISA IRQ.
        source: u8,
        /// The global system interrupt it arrives on.
        gsi: u32,
        /// Its polarity.
        polarity: Polarity,
        /// Its trigger mode.
        trigger: Trigger,
    },
    /// Any other structure, by type.
    Other(u8),
}

/// Offset of the first interrupt-controller structure in the MADT.
const MADT_ENTRIES: usize = HEADER_LEN + 8;

/// The structures of a checked MADT ("APIC") table. A structure whose
/// length is zero or runs past the table ends the walk.
pub fn madt_entries(table: &[u8]) -> impl Iterator<Item = MadtEntry> + '_ {
    let mut at = MADT_ENTRIES;
    core::iter::from_fn(move || {
        let kind = *table.get(at)?;
        let length = usize::from(*table.get(at + 1)?);
        let entry = table.get(at..at + length).filter(|_| length >= 2)?;
        at += length;
        Some(match (kind, length) {
            (1, 12..) => {
                MadtEntry::IoApic { id: entry[2], address: u32_at(entry, 4)?, gsi_base: u32_at(entry, 8)? }
            }
            (2, 10..) => {
                let flags = u16::from_le_bytes([entry[8], entry[9]]);
                MadtEntry::InterruptOverride {
                    source: entry[3],
                    gsi: u32_at(entry, 4)?,
                    polarity: match flags & 3 {
                        1 => Polarity::High,
                        3 => Polarity::Low,
                        _ => Polarity::BusDefault,
                    },
                    trigger: match (flags >> 2) & 3 {
                        1 => Trigger::Edge,
                        3 => Trigger::Level,
                        _ => Trigger::BusDefault,
                    },
                }
            }
            (kind, _) => MadtEntry::Other(kind),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsdp(revision: u8) -> [u8; V2_LEN] {
        let mut bytes = [0u8; V2_LEN];
        bytes[..8].copy_from_slice(&SIGNATURE);
        bytes[9..15].copy_from_slice(b"STRATA");
        bytes[15] = revision;
        bytes[16..20].copy_from_slice(&0x7fe_1234u32.to_le_bytes());
        bytes[20..24].copy_from_slice(&(V2_LEN as u32).to_le_bytes());
        bytes[24..32].copy_from_slice(&0x7fe_5678u64.to_le_bytes());
        let sum = |b: &[u8]| b.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        bytes[8] = 0u8.wrapping_sub(sum(&bytes[..V1_LEN]));
        bytes[32] = 0u8.wrapping_sub(sum(&bytes));
        bytes
    }

    #[test]
    fn valid_rsdps_of_both_revisions_parse() {
        let v2 = Rsdp::parse(&rsdp(2)).expect("valid");
        assert_eq!((v2.revision, &v2.oem, v2.rsdt, v2.xsdt), (2, b"STRATA", 0x7fe_1234, Some(0x7fe_5678)));
        assert_eq!(v2.len(), V2_LEN);
        let v1 = Rsdp::parse(&rsdp(0)[..V1_LEN]).expect("valid");
        assert_eq!(v1.xsdt, None);
    }

    #[test]
    fn corruption_is_detected() {
        let mut bad = rsdp(2);
        bad[0] = b'X';
        assert_eq!(Rsdp::parse(&bad), Err(RsdpError::BadSignature));
        let mut bad = rsdp(2);
        bad[17] ^= 1;
        assert_eq!(Rsdp::parse(&bad), Err(RsdpError::BadChecksum));
        let mut bad = rsdp(2);
        bad[30] ^= 1;
        assert_eq!(Rsdp::parse(&bad), Err(RsdpError::BadExtendedChecksum));
        assert_eq!(Rsdp::parse(&rsdp(2)[..30]), Err(RsdpError::TooShort));
    }

    #[test]
    fn scan_finds_only_a_valid_aligned_rsdp() {
        let mut area = vec![0u8; 0x400];
        // A signature with a bad checksum first, then a valid one.
        area[0x40..0x48].copy_from_slice(&SIGNATURE);
        area[0x120..0x120 + V2_LEN].copy_from_slice(&rsdp(2));
        assert_eq!(scan(&area, 0xe0000), Some(0xe0120));
        let mut misaligned = vec![0u8; 0x400];
        misaligned[0x128..0x128 + V2_LEN].copy_from_slice(&rsdp(2));
        assert_eq!(scan(&misaligned, 0xe0000), None);
    }

    fn table(signature: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_LEN];
        bytes[..4].copy_from_slice(signature);
        bytes.extend_from_slice(body);
        let length = bytes.len() as u32;
        bytes[4..8].copy_from_slice(&length.to_le_bytes());
        let sum = bytes.iter().fold(0u8, |s, &x| s.wrapping_add(x));
        bytes[9] = 0u8.wrapping_sub(sum);
        bytes
    }

    #[test]
    fn tables_are_checked_and_root_entries_read() {
        let xsdt = table(b"XSDT", &[0x00, 0x10, 0, 0, 0, 0, 0, 0, 0x00, 0x20, 0, 0, 1, 0, 0, 0]);
        let (signature, checked) = check_table(&xsdt).expect("valid");
        assert_eq!(&signature, b"XSDT");
        assert_eq!(root_entries(checked, true).collect::<Vec<_>>(), [0x1000, 0x1_0000_2000]);
        assert_eq!(root_entries(checked, false).collect::<Vec<_>>(), [0x1000, 0, 0x2000, 1]);
        let mut bad = xsdt.clone();
        bad[40] ^= 1;
        assert_eq!(check_table(&bad), Err(TableError::BadChecksum));
        assert_eq!(check_table(&xsdt[..xsdt.len() - 1]), Err(TableError::TooShort));
        let mut short = xsdt.clone();
        short[4..8].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(check_table(&short), Err(TableError::BadLength));
        assert_eq!(check_table(&[0; 6]), Err(TableError::TooShort));
    }

    #[test]
    fn madt_entries_are_decoded_and_malformed_ends_stop() {
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]); // local APIC
        body.extend_from_slice(&[1, 12, 2, 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0, 0]); // I/O APIC
        body.extend_from_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]); // IRQ 0 -> GSI 2
        body.extend_from_slice(&[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0]); // IRQ 9: level, high
        body.extend_from_slice(&[2, 10, 0, 10, 10, 0, 0, 0, 0x0f, 0]); // IRQ 10: level, low
        body.extend_from_slice(&[4, 0, 0xff]); // a zero-length structure ends the walk
        body.extend_from_slice(&[1, 12, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let madt = table(b"APIC", &body);
        let entries: Vec<MadtEntry> = madt_entries(&madt).collect();
        assert_eq!(
            entries,
            [
                MadtEntry::Other(0),
                MadtEntry::IoApic { id: 2, address: 0xfec0_0000, gsi_base: 0 },
                MadtEntry::InterruptOverride {
                    source: 0,
                    gsi: 2,
                    polarity: Polarity::BusDefault,
                    trigger: Trigger::BusDefault
                },
                MadtEntry::InterruptOverride {
                    source: 9,
                    gsi: 9,
                    polarity: Polarity::High,
                    trigger: Trigger::Level
                },
                MadtEntry::InterruptOverride {
                    source: 10,
                    gsi: 10,
                    polarity: Polarity::Low,
                    trigger: Trigger::Level
                },
            ]
        );
        // A structure running past the end is not read.
        let mut truncated = madt.clone();
        truncated.truncate(MADT_ENTRIES + 8 + 6);
        assert_eq!(madt_entries(&truncated).count(), 1);
    }
}
