//! Keeping the sender's resident memory close to what it actually uses.
//!
//! Relists and metrics polls decode thousands of API objects in short
//! bursts; glibc's allocator then keeps the freed pages in per-thread arenas,
//! so RSS stays at the burst's peak. Limiting the number of arenas and
//! trimming after each burst returns that memory to the system. Both are
//! no-ops outside glibc.

/// Limits malloc arenas (call once, early in `main`).
#[allow(unsafe_code)] // one libc call, its SAFETY argument beside it
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads allocate heavily.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns freed heap memory to the system (after a bulk decode).
#[allow(unsafe_code)] // one libc call, its SAFETY argument beside it
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
