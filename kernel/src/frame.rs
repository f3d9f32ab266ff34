//! The physical frame allocator: free RAM from the boot memory map, handed
//! out in 4 KiB frames for the kernel's own boot-time structures.
//!
//! Free memory is a sorted list of disjoint, coalesced ranges. Allocation is
//! first-fit from the top of memory (low memory stays free for real-mode
//! trampolines and legacy DMA). Freeing checks that the range was not free
//! already, so a double free is an error rather than silent corruption.

use core::fmt;

use heapless::Vec;

use crate::addr::PhysAddr;

/// Size of a frame.
pub const FRAME_SIZE: u64 = 4096;
/// Most disjoint free ranges tracked.
pub const MAX_RANGES: usize = 128;

/// A free range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u64,
    end: u64,
}

/// Why a frame operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// No free range fits the request.
    OutOfMemory {
        /// Frames requested.
        frames: u64,
        /// Alignment requested, in bytes.
        align: u64,
    },
    /// The request is malformed (zero frames, alignment not a power of two
    /// at least [`FRAME_SIZE`], or a misaligned address).
    BadRequest,
    /// The freed range overlaps memory that is already free.
    DoubleFree {
        /// Start of the range.
        address: PhysAddr,
    },
    /// The free list is full (memory too fragmented to track).
    TooFragmented,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory { frames, align } => {
                write!(f, "out of physical memory: {frames} frame(s) aligned to {align:#x}")
            }
            Self::BadRequest => write!(f, "malformed frame request"),
            Self::DoubleFree { address } => write!(f, "frames at {address} freed twice"),
            Self::TooFragmented => write!(f, "more than {MAX_RANGES} free ranges"),
        }
    }
}

/// Free physical memory.
#[derive(Debug, Default)]
pub struct FrameAllocator {
    free: Vec<Range, MAX_RANGES>,
}

impl FrameAllocator {
    /// An allocator with no memory.
    pub const fn new() -> Self {
        Self { free: Vec::new() }
    }

    /// Adds `[base, base + length)`, shrunk to whole frames. Overlap with
    /// memory already free is a [`FrameError::DoubleFree`].
    pub fn add(&mut self, base: u64, length: u64) -> Result<(), FrameError> {
        let start = base.next_multiple_of(FRAME_SIZE);
        let end = base.saturating_add(length) / FRAME_SIZE * FRAME_SIZE;
        if end <= start {
            return Ok(());
        }
        self.insert(Range { start, end })
    }

    /// Allocates `frames` contiguous frames aligned to `align` bytes.
    pub fn allocate(&mut self, frames: u64, align: u64) -> Result<PhysAddr, FrameError> {
        if frames == 0 || !align.is_power_of_two() || align < FRAME_SIZE {
            return Err(FrameError::BadRequest);
        }
        let size = frames.checked_mul(FRAME_SIZE).ok_or(FrameError::BadRequest)?;
        for index in (0..self.free.len()).rev() {
            let range = self.free[index];
            let Some(start) = range.end.checked_sub(size).map(|top| top / align * align) else { continue };
            if start < range.start {
                continue;
            }
            // Split: [range.start, start) stays free, [start + size, range.end) stays free.
            let below = Range { start: range.start, end: start };
            let above = Range { start: start + size, end: range.end };
            self.free.remove(index);
            for piece in [above, below] {
                if piece.start < piece.end {
                    self.free.insert(index, piece).map_err(|_| FrameError::TooFragmented)?;
                }
            }
            return Ok(PhysAddr(start));
        }
        Err(FrameError::OutOfMemory { frames, align })
    }

    /// Returns `frames` frames at `address` (as allocated).
    pub fn free(&mut self, address: PhysAddr, frames: u64) -> Result<(), FrameError> {
        if frames == 0 || !address.is_aligned(FRAME_SIZE) {
            return Err(FrameError::BadRequest);
        }
        let end = frames
            .checked_mul(FRAME_SIZE)
            .and_then(|size| address.get().checked_add(size))
            .ok_or(FrameError::BadRequest)?;
        self.insert(Range { start: address.get(), end })
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|r| r.end - r.start).sum()
    }

    /// Takes all free memory out of the allocator, as `(start, length)` ranges.
    pub fn take_all(&mut self) -> Vec<(u64, u64), MAX_RANGES> {
        let ranges = self.free.iter().map(|r| (r.start, r.end - r.start)).collect();
        self.free.clear();
        ranges
    }

    /// Number of disjoint free ranges.
    pub fn ranges(&self) -> usize {
        self.free.len()
    }

    /// Whether every byte of `[address, address + bytes)` is free.
    pub fn is_free(&self, address: PhysAddr, bytes: u64) -> bool {
        let end = address.get().saturating_add(bytes);
        self.free.iter().any(|r| r.start <= address.get() && end <= r.end)
    }

    fn insert(&mut self, mut range: Range) -> Result<(), FrameError> {
        let index = self.free.partition_point(|r| r.end <= range.start);
        if self.free.get(index).is_some_and(|next| next.start < range.end) {
            return Err(FrameError::DoubleFree { address: PhysAddr(range.start) });
        }
        // Coalesce with neighbours.
        let mut at = index;
        if index > 0 && self.free[index - 1].end == range.start {
            range.start = self.free[index - 1].start;
            self.free.remove(index - 1);
            at -= 1;
        }
        if self.free.get(at).is_some_and(|next| next.start == range.end) {
            range.end = self.free[at].end;
            self.free.remove(at);
        }
        self.free.insert(at, range).map_err(|_| FrameError::TooFragmented)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn allocates_from_the_top_with_alignment_and_coalesces_on_free() {
        let mut frames = FrameAllocator::new();
        frames.add(MIB, 7 * MIB + 123).expect("fresh");
        assert_eq!(frames.free_bytes(), 7 * MIB);
        let a = frames.allocate(1, FRAME_SIZE).expect("room");
        assert_eq!(a, PhysAddr(8 * MIB - FRAME_SIZE));
        let b = frames.allocate(512, 2 * MIB).expect("room");
        // The top frame is taken, so the highest aligned 2 MiB block that fits starts at 4 MiB.
        assert_eq!(b, PhysAddr(4 * MIB));
        assert_eq!(frames.ranges(), 2); // below b, and between b and a
        frames.free(a, 1).expect("allocated");
        frames.free(b, 512).expect("allocated");
        assert_eq!(frames.free_bytes(), 7 * MIB);
        assert_eq!(frames.ranges(), 1);
    }

    #[test]
    fn refuses_bad_requests_double_frees_and_exhaustion() {
        let mut frames = FrameAllocator::new();
        frames.add(0x10000, 0x4000).expect("fresh");
        assert_eq!(frames.allocate(0, FRAME_SIZE), Err(FrameError::BadRequest));
        assert_eq!(frames.allocate(1, 3000), Err(FrameError::BadRequest));
        assert_eq!(
            frames.allocate(5, FRAME_SIZE),
            Err(FrameError::OutOfMemory { frames: 5, align: FRAME_SIZE })
        );
        let a = frames.allocate(2, FRAME_SIZE).expect("room");
        frames.free(a, 2).expect("allocated");
        assert_eq!(frames.free(a, 1), Err(FrameError::DoubleFree { address: a }));
        assert_eq!(frames.free(PhysAddr(0x10001), 1), Err(FrameError::BadRequest));
        assert_eq!(frames.add(0x13000, 0x2000), Err(FrameError::DoubleFree { address: PhysAddr(0x13000) }));
    }

    proptest! {
        /// Random allocate/free sequences: allocations never overlap each
        /// other or free memory, and freeing everything restores the total.
        #[test]
        fn allocations_are_disjoint_and_conserve_memory(
            regions in prop::collection::vec((0u64..256, 1u64..64), 1..6),
            ops in prop::collection::vec((any::<bool>(), 1u64..40, 0u32..4, any::<prop::sample::Index>()), 1..80),
        ) {
            let mut frames = FrameAllocator::new();
            for (start, len) in regions {
                let _ = frames.add(start * 0x10000 + 0x800, len * 0x4000);
            }
            let total = frames.free_bytes();
            let mut live: std::vec::Vec<(PhysAddr, u64)> = std::vec::Vec::new();
            for (allocate, count, align_shift, pick) in ops {
                if allocate || live.is_empty() {
                    let align = FRAME_SIZE << (align_shift * 3);
                    if let Ok(at) = frames.allocate(count, align) {
                        prop_assert!(at.is_aligned(align));
                        prop_assert!(!frames.is_free(at, FRAME_SIZE));
                        for &(other, n) in &live {
                            prop_assert!(at.get() + count * FRAME_SIZE <= other.get() || other.get() + n * FRAME_SIZE <= at.get());
                        }
                        live.push((at, count));
                    }
                } else {
                    let (at, n) = live.swap_remove(pick.index(live.len()));
                    frames.free(at, n).expect("was allocated");
                }
                let in_use: u64 = live.iter().map(|&(_, n)| n * FRAME_SIZE).sum();
                prop_assert_eq!(frames.free_bytes() + in_use, total);
            }
            for (at, n) in live.drain(..) {
                frames.free(at, n).expect("was allocated");
            }
            prop_assert_eq!(frames.free_bytes(), total);
        }
    }
}
