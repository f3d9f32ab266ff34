//! The ACPI Root System Description Pointer (ACPI 6.5 §5.2.5): how the
//! loader finds it when firmware does not say, and how the kernel checks
//! what it was handed. Only the RSDP itself; the tables behind it are parsed
//! where they are used.

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
}
