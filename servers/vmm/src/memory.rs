//! Guest memory: RAM at guest-physical 0, as a byte slice the VMM has
//! mapped, and the guest's own page tables walked to turn the linear
//! addresses of instructions and string operands into guest-physical ones
//! (Intel SDM vol. 3A §4.3–4.5; AMD APM vol. 2 §5.2–5.3).

/// The guest's paging controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Paging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

/// Why an address cannot be read or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryError {
    /// The linear address has no present translation.
    NotMapped {
        /// The linear address.
        linear: u64,
    },
    /// The guest-physical address is not RAM.
    NotRam {
        /// The guest-physical address.
        physical: u64,
    },
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotMapped { linear } => write!(f, "linear address {linear:#x} is not mapped by the guest"),
            Self::NotRam { physical } => write!(f, "guest-physical address {physical:#x} is not RAM"),
        }
    }
}

/// Guest RAM, guest-physical `0..len`.
pub struct GuestMemory<'a> {
    ram: &'a mut [u8],
}

const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

impl<'a> GuestMemory<'a> {
    /// Guest memory backed by `ram`.
    pub fn new(ram: &'a mut [u8]) -> Self {
        Self { ram }
    }

    /// Bytes of RAM.
    pub fn size(&self) -> u64 {
        self.ram.len() as u64
    }

    /// The RAM bytes `physical..physical + length`.
    pub fn slice(&mut self, physical: u64, length: usize) -> Result<&mut [u8], MemoryError> {
        let start = usize::try_from(physical).map_err(|_| MemoryError::NotRam { physical })?;
        let end = start.checked_add(length).filter(|&end| end <= self.ram.len());
        match end {
            Some(end) => Ok(&mut self.ram[start..end]),
            None => Err(MemoryError::NotRam { physical }),
        }
    }

    /// Reads a little-endian word at `physical`.
    pub fn read_u64(&mut self, physical: u64) -> Result<u64, MemoryError> {
        let bytes = self.slice(physical, 8)?;
        Ok(u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])))
    }

    /// Reads a little-endian doubleword at `physical`.
    fn read_u32(&mut self, physical: u64) -> Result<u64, MemoryError> {
        let bytes = self.slice(physical, 4)?;
        Ok(u64::from(u32::from_le_bytes(bytes.try_into().unwrap_or([0; 4]))))
    }

    /// The guest-physical address of `linear` under `paging`.
    pub fn translate(&mut self, paging: Paging, linear: u64) -> Result<u64, MemoryError> {
        let missing = MemoryError::NotMapped { linear };
        if paging.cr0 & (1 << 31) == 0 {
            return Ok(linear & 0xffff_ffff);
        }
        let pae = paging.cr4 & (1 << 5) != 0;
        let long = paging.efer & (1 << 10) != 0;
        if !pae {
            // Two levels of 4-byte entries; 4 MiB pages with CR4.PSE.
            let linear = linear & 0xffff_ffff;
            let pde = self.read_u32((paging.cr3 & 0xffff_f000) + 4 * (linear >> 22))?;
            if pde & PRESENT == 0 {
                return Err(missing);
            }
            if pde & LARGE != 0 && paging.cr4 & (1 << 4) != 0 {
                return Ok((pde & 0xffc0_0000) | (linear & 0x3f_ffff));
            }
            let pte = self.read_u32((pde & 0xffff_f000) + 4 * ((linear >> 12) & 0x3ff))?;
            if pte & PRESENT == 0 {
                return Err(missing);
            }
            return Ok((pte & 0xffff_f000) | (linear & 0xfff));
        }
        // PAE: four levels in long mode, else a 4-entry PDPT then two levels.
        let (mut table, mut shift) = if long {
            (paging.cr3 & ADDRESS, 39)
        } else {
            let linear = linear & 0xffff_ffff;
            let pdpte = self.read_u64((paging.cr3 & 0xffff_ffe0) + 8 * (linear >> 30))?;
            if pdpte & PRESENT == 0 {
                return Err(missing);
            }
            (pdpte & ADDRESS, 21)
        };
        let linear = if long { linear } else { linear & 0xffff_ffff };
        loop {
            let entry = self.read_u64(table + 8 * ((linear >> shift) & 0x1ff))?;
            if entry & PRESENT == 0 {
                return Err(missing);
            }
            let page = 1u64 << shift;
            if shift == 12 || (entry & LARGE != 0 && shift <= 30) {
                return Ok((entry & ADDRESS & !(page - 1)) | (linear & (page - 1)));
            }
            table = entry & ADDRESS;
            shift -= 9;
        }
    }

    /// Copies guest-linear `linear..` into `out`, page by page.
    pub fn read_linear(&mut self, paging: Paging, linear: u64, out: &mut [u8]) -> Result<(), MemoryError> {
        let mut done = 0;
        while done < out.len() {
            let address = linear.wrapping_add(done as u64);
            let in_page = (4096 - (address & 0xfff)) as usize;
            let length = in_page.min(out.len() - done);
            let physical = self.translate(paging, address)?;
            out[done..done + length].copy_from_slice(self.slice(physical, length)?);
            done += length;
        }
        Ok(())
    }

    /// Copies `bytes` to guest-linear `linear..`, page by page.
    pub fn write_linear(&mut self, paging: Paging, linear: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        let mut done = 0;
        while done < bytes.len() {
            let address = linear.wrapping_add(done as u64);
            let in_page = (4096 - (address & 0xfff)) as usize;
            let length = in_page.min(bytes.len() - done);
            let physical = self.translate(paging, address)?;
            self.slice(physical, length)?.copy_from_slice(&bytes[done..done + length]);
            done += length;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(ram: &mut [u8], at: u64, value: u64) {
        ram[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn long_mode_walks_four_levels_and_large_pages() {
        let mut ram = vec![0u8; 8 << 20];
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000: entry 0 a PT at
        // 0x4000, entry 1 a 2 MiB page at 4 MiB.
        put(&mut ram, 0x1000, 0x2003);
        put(&mut ram, 0x2000, 0x3003);
        put(&mut ram, 0x3000, 0x4003);
        put(&mut ram, 0x3008, 0x40_0083);
        put(&mut ram, 0x4000 + 8 * 5, 0x7003);
        ram[0x7123] = 0xab;
        let mut memory = GuestMemory::new(&mut ram);
        let paging = Paging { cr0: 1 << 31 | 1, cr3: 0x1000, cr4: 1 << 5, efer: 1 << 10 | 1 << 8 };
        assert_eq!(memory.translate(paging, 0x5123), Ok(0x7123));
        assert_eq!(memory.translate(paging, 0x20_0042), Ok(0x40_0042));
        assert_eq!(memory.translate(paging, 0x6000), Err(MemoryError::NotMapped { linear: 0x6000 }));
        let mut byte = [0];
        memory.read_linear(paging, 0x5123, &mut byte).expect("mapped");
        assert_eq!(byte, [0xab]);
        // Unpaged: linear is physical, and past RAM is an error.
        let flat = Paging { cr0: 1, ..Paging::default() };
        assert_eq!(memory.translate(flat, 0x7123), Ok(0x7123));
        assert_eq!(
            memory.read_linear(flat, 0x7f_ffff, &mut [0; 2]),
            Err(MemoryError::NotRam { physical: 0x80_0000 })
        );
    }

    #[test]
    fn legacy_paging_with_and_without_pae() {
        let mut ram = vec![0u8; 4 << 20];
        // 32-bit: PD at 0x1000, entry 1 a 4 MiB page (PSE) at 0, entry 0 a PT at 0x2000.
        ram[0x1004..0x1008].copy_from_slice(&0x0000_0083u32.to_le_bytes());
        ram[0x1000..0x1004].copy_from_slice(&0x2003u32.to_le_bytes());
        ram[0x2000 + 4 * 3..0x2000 + 4 * 4].copy_from_slice(&0x9003u32.to_le_bytes());
        let mut memory = GuestMemory::new(&mut ram);
        let paging = Paging { cr0: 1 << 31 | 1, cr3: 0x1000, cr4: 1 << 4, efer: 0 };
        assert_eq!(memory.translate(paging, 0x40_1234), Ok(0x1234));
        assert_eq!(memory.translate(paging, 0x3456), Ok(0x9456));
        // PAE: PDPT at 0x3000 entry 0 -> PD 0x4000 entry 0 -> 2 MiB page at 2 MiB.
        put(&mut ram, 0x3000, 0x4001);
        put(&mut ram, 0x4000, 0x20_0083);
        let mut memory = GuestMemory::new(&mut ram);
        let pae = Paging { cr0: 1 << 31 | 1, cr3: 0x3000, cr4: 1 << 5, efer: 0 };
        assert_eq!(memory.translate(pae, 0x1234), Ok(0x20_1234));
    }
}
