//! A global allocator for programs that want `alloc`: a linked-list heap
//! (the `linked_list_allocator` crate) over an array in the program's own
//! `.bss`, set up on first use.
//!
//! ```ignore
//! #[global_allocator]
//! static HEAP: strata_rt::heap::Heap<{ 256 * 1024 }> = strata_rt::heap::Heap::new();
//! ```
//!
//! An allocation that does not fit returns null, and `alloc` then panics
//! (which the task's parent sees as a fault).

// The allocator hands out raw memory: this module is the SDK's one other
// user of `unsafe` besides `sys`.
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use linked_list_allocator::LockedHeap;

/// A heap of `N` bytes.
pub struct Heap<const N: usize> {
    arena: UnsafeCell<[u8; N]>,
    heap: LockedHeap,
    ready: AtomicBool,
}

// SAFETY: the arena is only reached through `heap`, whose lock serialises
// every use; `ready` is atomic.
unsafe impl<const N: usize> Sync for Heap<N> {}

impl<const N: usize> Heap<N> {
    /// An empty heap (it takes its arena on first use).
    pub const fn new() -> Self {
        Self { arena: UnsafeCell::new([0; N]), heap: LockedHeap::empty(), ready: AtomicBool::new(false) }
    }

    fn ensure_ready(&self) {
        if self.ready.load(Ordering::Acquire) {
            return;
        }
        let mut heap = self.heap.lock();
        if !self.ready.load(Ordering::Relaxed) {
            // SAFETY: the arena is this heap's alone, lives as long as it
            // (a static), and is handed over exactly once (under the lock).
            unsafe { heap.init(self.arena.get().cast::<u8>(), N) };
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Bytes in use and bytes free.
    pub fn usage(&self) -> (usize, usize) {
        self.ensure_ready();
        let heap = self.heap.lock();
        (heap.used(), heap.free())
    }
}

impl<const N: usize> Default for Heap<N> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: delegates to `LockedHeap`, which upholds the `GlobalAlloc`
// contract over the arena it was given.
unsafe impl<const N: usize> GlobalAlloc for Heap<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.ensure_ready();
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { self.heap.alloc(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract; `pointer` came from `alloc`.
        unsafe { self.heap.dealloc(pointer, layout) }
    }
}
