//! A counting global allocator: lets the harnesses assert that memory stays
//! proportional to the input (no allocation sized by an untrusted length).
//!
//! Counters are per thread (const-initialised thread-locals without
//! destructors, so they never allocate), which keeps parallel property tests
//! from disturbing each other's measurements.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

/// The allocator installed by this crate (see `lib.rs`).
pub struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn grew(size: usize) {
    let _ = LIVE.try_with(|l| {
        let live = l.get().wrapping_add(size as isize);
        l.set(live);
        let _ = PEAK.try_with(|p| p.set(p.get().max(live)));
    });
    let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
}

fn shrank(size: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().wrapping_sub(size as isize)));
}

// SAFETY: every call is forwarded unchanged to `System`; the counters do not
// affect the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

/// A measured section on the current thread: peak live heap and largest
/// single allocation since [`Measure::start`].
pub struct Measure {
    base: isize,
}

impl Measure {
    /// Starts measuring.
    pub fn start() -> Self {
        let base = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(base));
        LARGEST.with(|m| m.set(0));
        Measure { base }
    }

    /// Peak bytes allocated above the starting level.
    pub fn peak(&self) -> usize {
        PEAK.with(Cell::get).saturating_sub(self.base).max(0) as usize
    }

    /// Largest single allocation (or reallocation target) seen.
    pub fn largest(&self) -> usize {
        LARGEST.with(Cell::get)
    }
}
