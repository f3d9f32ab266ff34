//! Access to physical memory by address.
//!
//! The loader runs with the low 4 GiB identity-mapped; the bare-metal binary
//! implements [`PhysicalMemory`] over that mapping, the host tests over a
//! byte vector. Every address that comes from firmware or the boot image goes
//! through these checked accessors, so a bad pointer is an error, not a read of
//! random memory.

/// Physical memory the loader may read and write.
pub trait PhysicalMemory {
    /// The bytes at `[address, address + len)`, if all of them are addressable.
    fn bytes(&self, address: u64, len: u64) -> Option<&[u8]>;
    /// The bytes at `[address, address + len)` for writing.
    fn bytes_mut(&mut self, address: u64, len: u64) -> Option<&mut [u8]>;
}

/// A vector standing in for physical memory `[base, base + len)`, for tests.
#[cfg(test)]
pub struct Arena {
    /// Physical address of `memory[0]`.
    pub base: u64,
    /// The contents.
    pub memory: Vec<u8>,
}

#[cfg(test)]
impl Arena {
    /// `len` zero bytes at physical `base`.
    pub fn new(base: u64, len: usize) -> Self {
        Self { base, memory: vec![0; len] }
    }

    /// Copies `data` to physical `address`.
    pub fn put(&mut self, address: u64, data: &[u8]) {
        self.bytes_mut(address, data.len() as u64).expect("inside arena").copy_from_slice(data);
    }
}

#[cfg(test)]
impl PhysicalMemory for Arena {
    fn bytes(&self, address: u64, len: u64) -> Option<&[u8]> {
        let start = usize::try_from(address.checked_sub(self.base)?).ok()?;
        self.memory.get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }

    fn bytes_mut(&mut self, address: u64, len: u64) -> Option<&mut [u8]> {
        let start = usize::try_from(address.checked_sub(self.base)?).ok()?;
        self.memory.get_mut(start..start.checked_add(usize::try_from(len).ok()?)?)
    }
}
